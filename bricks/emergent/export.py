"""Write discovered neuron sets as `ffn_mask` brick folders (manifest + mask.safetensors), atomically."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from bricks.layer_masks import write_layer_mask_brick
from bricks.manifest import BaseModelRef

__all__ = ["write_mask_brick"]


def write_mask_brick(folder: Path, masks: Mapping[int, "object"], *, brick_id: str, description: str,
                     examples: Sequence[str], base_model: BaseModelRef, metrics: Mapping[str, float],
                     skills: Sequence[str] = (), version: int = 1, extra: Mapping[str, object] | None = None) -> Path:
    """An `ffn_mask` brick in `folder` (which must not exist yet); `extra` adds manifest keys (e.g.
    `{"routable": False}` for a brick kept under the quality gate)."""
    return write_layer_mask_brick(folder, masks, kind="ffn_mask", brick_id=brick_id, description=description,
                                  examples=examples, base_model=base_model, metrics=metrics, skills=skills,
                                  version=version, extra=extra)
