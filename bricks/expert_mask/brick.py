"""An expert-subset brick: per MoE layer, the routed experts it keeps (the router picks its top-k among them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bricks.errors import IncompatibleBrickError
from bricks.layer_masks import kept_share, read_layer_masks, require_mask_file, write_layer_masks
from bricks.manifest import BrickManifest

__all__ = ["ExpertMaskBrick", "EXPERT_MASK_FILE"]

EXPERT_MASK_FILE = "experts.safetensors"


@dataclass(frozen=True)
class ExpertMaskBrick:
    """A validated expert_mask brick folder: `experts.safetensors` holds `layers.{i}` uint8 [num_experts]
    (1: the expert is kept) for the MoE layers it restricts; a layer it does not list routes over every expert."""

    folder: Path
    manifest: BrickManifest

    @classmethod
    def from_dir(cls, folder: Path, manifest: BrickManifest) -> "ExpertMaskBrick":
        folder = Path(folder)
        require_mask_file(folder, EXPERT_MASK_FILE, "expert_mask", manifest.id)
        return cls(folder, manifest)

    def masks(self) -> dict[int, "object"]:
        """Layer index -> bool tensor [num_experts] (True: the expert is kept)."""
        return read_layer_masks(self.folder / EXPERT_MASK_FILE, f"expert_mask brick {self.manifest.key}")

    def density(self) -> float:
        """Share of the listed layers' experts that the brick keeps."""
        return kept_share(self.masks())

    def check_fits(self, model_config) -> None:
        """Raise one IncompatibleBrickError listing every layer that does not fit the model's routers: not a MoE
        layer, another expert count, or fewer kept experts than the router picks per token."""
        from bricks.expert_mask.layout import moe_dims

        try:
            dims = moe_dims(model_config)
        except IncompatibleBrickError as e:
            raise IncompatibleBrickError(f"expert_mask brick {self.manifest.key} does not fit the base model: "
                                         f"{e}") from None
        problems = []
        for layer, m in sorted(self.masks().items()):
            if layer not in dims.moe_layers:
                problems.append(f"layer {layer} is not a MoE layer (MoE layers: {list(dims.moe_layers)})")
            elif m.numel() != dims.num_experts:
                problems.append(f"layer {layer} mask has {m.numel()} experts, expected {dims.num_experts}")
            elif int(m.sum()) < dims.top_k:
                problems.append(f"layer {layer} keeps {int(m.sum())} experts, fewer than num_experts_per_tok "
                                f"{dims.top_k}")
        if problems:
            raise IncompatibleBrickError(f"expert_mask brick {self.manifest.key} does not fit the base model: "
                                         + "; ".join(problems))

    @staticmethod
    def write_masks(folder: Path, masks: dict[int, "object"]) -> None:
        """Write `experts.safetensors` (uint8 [num_experts] per layer) into an existing folder."""
        write_layer_masks(Path(folder) / EXPERT_MASK_FILE, masks)
