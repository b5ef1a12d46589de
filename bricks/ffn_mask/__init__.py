"""Emergent bricks: masks over the base model's FFN neurons."""

from bricks.ffn_mask.brick import MASK_FILE, FfnMaskBrick
from bricks.ffn_mask.combine import combine_masks

__all__ = ["FfnMaskBrick", "MASK_FILE", "combine_masks"]
