"""The Executor interface: generate text for a batch of requests, each with its own brick configuration."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from orchestrator.plan import BrickConfig, Decoding

__all__ = ["GenerationRequest", "Executor", "UnsupportedConfigError", "group_requests"]


class UnsupportedConfigError(ValueError):
    """A request asks for something this executor cannot do; the message lists every such thing."""


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to complete with a brick configuration and decoding settings."""

    prompt: str
    config: BrickConfig = BrickConfig()
    decoding: Decoding = Decoding()


@runtime_checkable
class Executor(Protocol):
    """Runs generation requests; requests with different bricks may be mixed in one call."""

    name: str

    @property
    def model_config(self):
        """The base model's transformers config (bricks are checked against it)."""
        ...

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """The completion of each request, in order."""
        ...

    def close(self) -> None:
        """Release the model and any worker processes."""
        ...


def group_requests(requests: Sequence[GenerationRequest]) -> dict[tuple[str, Decoding], list[int]]:
    """Request indices grouped by (brick configuration key, decoding), in first-seen order."""
    groups: dict[tuple[str, Decoding], list[int]] = defaultdict(list)
    for i, req in enumerate(requests):
        groups[(req.config.key, req.decoding)].append(i)
    return dict(groups)
