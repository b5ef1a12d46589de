"""An expert-subset brick: per MoE layer, the routed experts it keeps (the router picks its top-k among them)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bricks.errors import IncompatibleBrickError, IntegrityError, ManifestError
from bricks.manifest import BrickManifest

__all__ = ["ExpertMaskBrick", "EXPERT_MASK_FILE"]

EXPERT_MASK_FILE = "experts.safetensors"
_LAYER = re.compile(r"^layers\.(\d+)$")


@dataclass(frozen=True)
class ExpertMaskBrick:
    """A validated expert_mask brick folder: `experts.safetensors` holds `layers.{i}` uint8 [num_experts]
    (1: the expert is kept) for the MoE layers it restricts; a layer it does not list routes over every expert."""

    folder: Path
    manifest: BrickManifest

    @classmethod
    def from_dir(cls, folder: Path, manifest: BrickManifest) -> "ExpertMaskBrick":
        folder = Path(folder)
        if not (folder / EXPERT_MASK_FILE).is_file():
            raise ManifestError(f"expert_mask brick {manifest.id!r} has no {EXPERT_MASK_FILE} in {str(folder)!r}")
        return cls(folder, manifest)

    def masks(self) -> dict[int, "object"]:
        """Layer index -> bool tensor [num_experts] (True: the expert is kept)."""
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(self.folder / EXPERT_MASK_FILE))
        except Exception as e:  # safetensors raises its own SafetensorError (and OSError) for unreadable files
            raise IntegrityError(f"expert_mask brick {self.manifest.key}: {EXPERT_MASK_FILE} cannot be read "
                                 f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        out = {}
        for name, t in tensors.items():
            m = _LAYER.match(name)
            if not m or t.dim() != 1:
                raise ManifestError(f"{self.folder / EXPERT_MASK_FILE}: unexpected tensor {name!r} of shape "
                                    f"{list(t.shape)}")
            out[int(m.group(1))] = t.bool()
        return out

    def density(self) -> float:
        """Share of the listed layers' experts that the brick keeps."""
        masks = self.masks()
        total = sum(m.numel() for m in masks.values())
        return sum(int(m.sum()) for m in masks.values()) / total if total else 0.0

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
        import torch
        from safetensors.torch import save_file

        save_file({f"layers.{i}": m.to("cpu").bool().to(dtype=torch.uint8).contiguous()
                   for i, m in masks.items()}, str(Path(folder) / EXPERT_MASK_FILE))
