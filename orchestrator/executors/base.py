"""The Executor interface: generate text for a batch of requests, each with its own brick configuration."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from bricks.errors import BrickworkError
from orchestrator.plan import BrickConfig, Decoding

__all__ = ["GenerationRequest", "Executor", "UnsupportedConfigError", "group_requests", "config_masks", "mask_target",
           "reason", "context_length", "context_problems"]


class UnsupportedConfigError(BrickworkError):
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

    # Optional: `prompt_problems(requests) -> list[str | None]`, why each prompt cannot run (too long for the
    # model's context) or None. The Orchestrator refuses those requests one by one instead of submitting them.


def context_length(model_config, max_model_len: int | None = None) -> int | None:
    """The most tokens (prompt + generated) a model attends to: `max_model_len` when set, else the config's."""
    if max_model_len is not None:
        return max_model_len
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def context_problems(tokenizer, context: int | None, requests: Sequence[GenerationRequest],
                     encode: Callable[[list[str]], list[list[int]]] | None = None) -> list[str | None]:
    """For each request, why its prompt plus `max_new_tokens` does not fit `context` tokens, or None (prompts
    tokenized by `encode` when given, else `encode_prompts`)."""
    if context is None or not requests:
        return [None] * len(requests)
    from bricks.generation import encode_prompts

    prompts = [r.prompt for r in requests]
    lengths = [len(e) for e in (encode(prompts) if encode is not None else encode_prompts(tokenizer, prompts))]
    return [None if n + r.decoding.max_new_tokens <= context else
            f"the prompt is {n} tokens and max_new_tokens is {r.decoding.max_new_tokens}: more than the model's "
            f"context of {context} tokens" for n, r in zip(lengths, requests)]


def group_requests(requests: Sequence[GenerationRequest]) -> dict[tuple[str, Decoding], list[int]]:
    """Request indices grouped by (brick configuration key, decoding), in first-seen order."""
    groups: dict[tuple[str, Decoding], list[int]] = defaultdict(list)
    for i, req in enumerate(requests):
        groups[(req.config.key, req.decoding)].append(i)
    return dict(groups)


def mask_target(config: BrickConfig) -> str | None:
    """What `config`'s mask bricks restrict: "neurons" (ffn_mask), "experts" (expert_mask), None without any; one
    ConfigError when a step mixes both."""
    from bricks.errors import ConfigError
    from bricks.kinds import get_kind

    targets = {get_kind(b.kind).restricts for b in config.masks}
    if len(targets) > 1:
        kinds = ", ".join(f"{b.key}: {b.kind}" for b in config.masks)
        raise ConfigError(f"configuration {config.key} mixes FFN-neuron and expert mask bricks ({kinds}); "
                          "expected one mask kind per step")
    return next(iter(targets), None)


def config_masks(library, config: BrickConfig, model_config, cache: dict | None = None) -> dict | None:
    """The combined mask of `config`'s emergent bricks ({layer: bool [neurons]} or, for expert bricks,
    {layer: bool [experts]}; see `mask_target`), each checked against the model (and kept in
    `cache` by brick key, when given, so it is read once); None when the configuration has no mask brick."""
    if not config.masks:
        return None
    mask_target(config)  # one mask kind per step
    from bricks.ffn_mask import combine_masks
    from bricks.integrity import check_brick
    from bricks.kinds import get_kind

    cache = {} if cache is None else cache
    loaded = []
    for ref in config.masks:
        if ref.key not in cache:
            brick = library.get(ref.id, ref.version)
            check_brick(brick)  # checksums, safetensors header, no symlinks (IntegrityError / UnsafeArtifactError)
            # read as the kind the step names (FFN neurons or MoE experts): a brick of another kind fails here, named
            mask_brick = get_kind(ref.kind).load(brick.path, brick.manifest)
            mask_brick.check_fits(model_config)
            cache[ref.key] = mask_brick.masks()
        loaded.append(cache[ref.key])
    return loaded[0] if len(loaded) == 1 else combine_masks(loaded, config.mask_merge)


def reason(error: Exception) -> str:
    """The first line of an error's message, for one-line "cannot run" lists (a KeyError without its quotes)."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return (text.strip().splitlines() or [type(error).__name__])[0]
