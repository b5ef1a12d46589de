"""The brick kinds, in one registry: each kind's on-disk format, how executors apply it, and how it combines.

Everything that depends on a brick's kind asks this registry instead of comparing strings. Adding a kind is one
`BrickKind` entry, plus the executors' support for its `role` (and, for a mask, what it `restricts`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from bricks.errors import BrickError, ManifestError

if TYPE_CHECKING:
    from bricks.manifest import BrickManifest

__all__ = ["BrickKind", "LoadedBrick", "KINDS", "KIND_NAMES", "get_kind", "load_brick", "misfit"]


class LoadedBrick(Protocol):
    """What every kind's `load` returns: a validated folder that can be checked against a model config."""

    def check_fits(self, model_config) -> None: ...


@dataclass(frozen=True)
class BrickKind:
    """One kind of brick.

    `role` says how an executor applies it: "adapter" bricks add weights to the model (LoRA; several in one
    step merge by a `policies.Composition` method), "mask" bricks restrict the FFN neurons (several in one
    step combine by union or intersection). `load` validates a folder against its manifest (files present, no
    pickles) without reading tensors; `check_fits` on the result compares it with a model config.
    """

    name: str
    role: Literal["adapter", "mask"]
    artifact: str
    load: Callable[[Path, BrickManifest], LoadedBrick]
    combines_by: tuple[str, ...]
    restricts: Literal["neurons", "experts"] | None = None  # a mask's target: FFN neurons or MoE routed experts


def _load_lora(folder: Path, manifest: BrickManifest) -> LoadedBrick:
    from bricks.lora import LoraBrick

    return LoraBrick.from_dir(folder, manifest)


def _load_expert_mask(folder: Path, manifest: BrickManifest) -> LoadedBrick:
    from bricks.expert_mask import ExpertMaskBrick

    return ExpertMaskBrick.from_dir(folder, manifest)


def _load_ffn_mask(folder: Path, manifest: BrickManifest) -> LoadedBrick:
    from bricks.ffn_mask import FfnMaskBrick

    return FfnMaskBrick.from_dir(folder, manifest)


KINDS: dict[str, BrickKind] = {
    "lora": BrickKind("lora", "adapter", "adapter_model.safetensors", _load_lora,
                      ("cat", "linear", "svd", "ties", "dare_linear", "dare_ties")),
    "ffn_mask": BrickKind("ffn_mask", "mask", "mask.safetensors", _load_ffn_mask, ("union", "intersection"),
                          restricts="neurons"),
    "expert_mask": BrickKind("expert_mask", "mask", "experts.safetensors", _load_expert_mask,
                             ("union", "intersection"), restricts="experts"),
}
KIND_NAMES: tuple[str, ...] = tuple(KINDS)


def get_kind(name: str) -> BrickKind:
    """The registered kind `name`, or a ManifestError naming it and the known kinds."""
    try:
        return KINDS[name]
    except KeyError:
        raise ManifestError(f"unknown brick kind {name!r}; expected one of {', '.join(KIND_NAMES)}") from None


def load_brick(folder: Path, manifest: BrickManifest) -> LoadedBrick:
    """Validate a brick folder with its kind's own checks (no tensor is read)."""
    return get_kind(manifest.kind).load(Path(folder), manifest)


def misfit(folder: Path, manifest: BrickManifest, model_config) -> str | None:
    """Why the brick in `folder` cannot run on a model with `model_config`, or None when it fits."""
    try:
        load_brick(folder, manifest).check_fits(model_config)
    except BrickError as e:
        return str(e)
    return None
