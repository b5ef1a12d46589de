"""Emergent bricks: find the FFN neurons a skill uses (profiling, discovery) and run with only them (masks)."""

from bricks.emergent.attribution import attribution_scores
from bricks.emergent.layout import FfnLayout, FfnLayoutError, ffn_layout
from bricks.emergent.masking import apply_masks, compact_ffn, mask_density
from bricks.emergent.profile import NeuronProfile, profile_neurons

__all__ = ["attribution_scores", "FfnLayout", "FfnLayoutError", "ffn_layout", "apply_masks", "compact_ffn",
           "mask_density", "NeuronProfile", "profile_neurons"]
