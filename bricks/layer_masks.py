"""Per-layer masks in one safetensors file, `layers.{i}` -> uint8 [n] (1: kept): how ffn_mask bricks store
their neurons and expert_mask bricks their experts; and a mask brick's whole folder, written atomically."""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from bricks.errors import IntegrityError, ManifestError

__all__ = ["require_mask_file", "read_layer_masks", "write_layer_masks", "kept_share", "write_layer_mask_brick"]

_LAYER = re.compile(r"^layers\.(\d+)$")


def require_mask_file(folder: Path, file_name: str, kind: str, brick_id: str) -> None:
    """ManifestError unless `folder` holds `file_name`."""
    if not (Path(folder) / file_name).is_file():
        raise ManifestError(f"{kind} brick {brick_id!r} has no {file_name} in {str(folder)!r}")


def read_layer_masks(path: Path, brick: str) -> dict[int, object]:
    """Layer index -> bool tensor [n] from `path`; `brick` ("ffn_mask brick x@1") names it in errors: an
    unreadable file is an IntegrityError, a tensor that is not `layers.{i}` of one dimension a ManifestError."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError (and OSError) for unreadable files
        raise IntegrityError(f"{brick}: {Path(path).name} cannot be read "
                             f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    out = {}
    for name, t in tensors.items():
        m = _LAYER.match(name)
        if not m or t.dim() != 1:
            raise ManifestError(f"{path}: unexpected tensor {name!r} of shape {list(t.shape)}")
        out[int(m.group(1))] = t.bool()
    return out


def write_layer_masks(path: Path, masks: dict[int, object]) -> None:
    """Write `masks` (layer index -> bool tensor) to `path` as uint8 `layers.{i}`."""
    import torch
    from safetensors.torch import save_file

    save_file({f"layers.{i}": m.to("cpu").bool().to(dtype=torch.uint8).contiguous() for i, m in masks.items()},
              str(path))


def kept_share(masks: dict[int, object]) -> float:
    """The share of all positions of `masks` that are kept (0 for no masks)."""
    total = sum(m.numel() for m in masks.values())
    return sum(int(m.sum()) for m in masks.values()) / total if total else 0.0


def write_layer_mask_brick(folder: Path, masks: Mapping[int, object], *, kind: str, brick_id: str, description: str,
                           examples: Sequence[str], base_model, metrics: Mapping[str, float],
                           skills: Sequence[str] = (), version: int = 1,
                           extra: Mapping[str, object] | None = None) -> Path:
    """A mask brick of `kind` ("ffn_mask", "expert_mask") in `folder`, which must not exist yet: its mask file
    (the kind's artifact) and manifest, written atomically; `extra` adds manifest keys (e.g.
    `{"routable": False}` for a brick kept under the quality gate)."""
    from bricks.atomic import staged_folder
    from bricks.kinds import get_kind
    from bricks.manifest import BrickManifest, file_entry

    artifact = get_kind(kind).artifact
    folder = Path(folder)
    with staged_folder(folder) as tmp:
        write_layer_masks(tmp / artifact, dict(masks))
        manifest = BrickManifest(
            id=brick_id, version=version, kind=kind, description=description, examples=list(examples),
            base_model=base_model, files=[file_entry(tmp, artifact)], metrics=dict(metrics),
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), skills=list(skills),
            **dict(extra or {}))
        manifest.save(tmp / "brick.json")
    return folder
