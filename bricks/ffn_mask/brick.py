"""An emergent brick: per layer, the FFN neurons (rows of gate/up, columns of down) that belong to it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bricks.errors import IncompatibleBrickError, IntegrityError, ManifestError
from bricks.manifest import BrickManifest

__all__ = ["FfnMaskBrick", "MASK_FILE"]

MASK_FILE = "mask.safetensors"
_LAYER = re.compile(r"^layers\.(\d+)$")


@dataclass(frozen=True)
class FfnMaskBrick:
    """A validated ffn_mask brick folder: `mask.safetensors` holds `layers.{i}` bool/uint8 [intermediate_size]."""

    folder: Path
    manifest: BrickManifest

    @classmethod
    def from_dir(cls, folder: Path, manifest: BrickManifest) -> "FfnMaskBrick":
        folder = Path(folder)
        if not (folder / MASK_FILE).is_file():
            raise ManifestError(f"ffn_mask brick {manifest.id!r} has no {MASK_FILE} in {str(folder)!r}")
        return cls(folder, manifest)

    def masks(self) -> dict[int, "object"]:
        """Layer index -> bool tensor [intermediate_size] (True: the neuron is in the brick)."""
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(self.folder / MASK_FILE))
        except Exception as e:  # safetensors raises its own SafetensorError (and OSError) for unreadable files
            raise IntegrityError(f"ffn_mask brick {self.manifest.key}: {MASK_FILE} cannot be read "
                                 f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        out = {}
        for name, t in tensors.items():
            m = _LAYER.match(name)
            if not m or t.dim() != 1:
                raise ManifestError(f"{self.folder / MASK_FILE}: unexpected tensor {name!r} of shape {list(t.shape)}")
            out[int(m.group(1))] = t.bool()
        return out

    def density(self) -> float:
        masks = self.masks()
        total = sum(m.numel() for m in masks.values())
        return sum(int(m.sum()) for m in masks.values()) / total if total else 0.0

    def check_fits(self, model_config) -> None:
        """Raise one IncompatibleBrickError listing every layer whose mask does not fit the model's FFN."""
        from bricks.families import intermediate_size

        neurons = intermediate_size(model_config)
        problems = []
        for layer, m in self.masks().items():
            if layer >= model_config.num_hidden_layers:
                problems.append(f"layer {layer} but the model has {model_config.num_hidden_layers}")
            if m.numel() != neurons:
                problems.append(f"layer {layer} mask has {m.numel()} neurons, expected {neurons}")
        if problems:
            raise IncompatibleBrickError(f"ffn_mask brick {self.manifest.key} does not fit the base model: "
                                         + "; ".join(problems))

    @staticmethod
    def write_masks(folder: Path, masks: dict[int, "object"]) -> None:
        """Write `mask.safetensors` (uint8 per layer) into an existing folder."""
        import torch
        from safetensors.torch import save_file

        save_file({f"layers.{i}": m.to("cpu").bool().to(dtype=torch.uint8).contiguous()
                   for i, m in masks.items()}, str(Path(folder) / MASK_FILE))
