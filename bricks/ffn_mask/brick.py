"""An emergent brick: per layer, the FFN neurons (rows of gate/up, columns of down) that belong to it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bricks.errors import IncompatibleBrickError
from bricks.layer_masks import kept_share, read_layer_masks, require_mask_file, write_layer_masks
from bricks.manifest import BrickManifest

__all__ = ["FfnMaskBrick", "MASK_FILE"]

MASK_FILE = "mask.safetensors"


@dataclass(frozen=True)
class FfnMaskBrick:
    """A validated ffn_mask brick folder: `mask.safetensors` holds `layers.{i}` bool/uint8 [intermediate_size]."""

    folder: Path
    manifest: BrickManifest

    @classmethod
    def from_dir(cls, folder: Path, manifest: BrickManifest) -> "FfnMaskBrick":
        folder = Path(folder)
        require_mask_file(folder, MASK_FILE, "ffn_mask", manifest.id)
        return cls(folder, manifest)

    def masks(self) -> dict[int, "object"]:
        """Layer index -> bool tensor [intermediate_size] (True: the neuron is in the brick)."""
        return read_layer_masks(self.folder / MASK_FILE, f"ffn_mask brick {self.manifest.key}")

    def density(self) -> float:
        return kept_share(self.masks())

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
        write_layer_masks(Path(folder) / MASK_FILE, masks)
