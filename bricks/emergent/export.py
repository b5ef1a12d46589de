"""Write discovered neuron sets as `ffn_mask` brick folders (manifest + mask.safetensors), atomically."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from pathlib import Path

from bricks.atomic import staged_folder
from bricks.ffn_mask import MASK_FILE, FfnMaskBrick
from bricks.manifest import BaseModelRef, BrickManifest, file_entry

__all__ = ["write_mask_brick"]


def write_mask_brick(folder: Path, masks: Mapping[int, "object"], *, brick_id: str, description: str,
                     examples: Sequence[str], base_model: BaseModelRef, metrics: Mapping[str, float],
                     skills: Sequence[str] = (), version: int = 1, extra: Mapping[str, object] | None = None) -> Path:
    """An `ffn_mask` brick in `folder` (which must not exist yet); `extra` adds manifest keys (e.g.
    `{"routable": False}` for a brick kept under the quality gate)."""
    folder = Path(folder)
    with staged_folder(folder) as tmp:
        FfnMaskBrick.write_masks(tmp, dict(masks))
        manifest = BrickManifest(
            id=brick_id, version=version, kind="ffn_mask", description=description, examples=list(examples),
            base_model=base_model, files=[file_entry(tmp, MASK_FILE)], metrics=dict(metrics),
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), skills=list(skills),
            **dict(extra or {}))
        manifest.save(tmp / "brick.json")
    return folder
