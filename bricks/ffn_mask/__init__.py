"""Emergent bricks: masks over the base model's FFN neurons."""

from bricks.ffn_mask.brick import MASK_FILE, FfnMaskBrick

__all__ = ["FfnMaskBrick", "MASK_FILE"]
