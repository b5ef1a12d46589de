"""Emergent bricks of a mixture-of-experts model: a subset of each MoE layer's routed experts.

`profile_experts` counts the experts each skill is routed to; `select_experts` keeps the most used ones under a
budget; an `expert_mask` brick (`ExpertMaskBrick`, `experts.safetensors`) stores {layer: bool [num_experts]};
`apply_expert_masks` runs the model with the other experts' router logits at -inf, so every token's top-k is
taken among the kept experts.
"""

from bricks.expert_mask.brick import EXPERT_MASK_FILE, ExpertMaskBrick
from bricks.expert_mask.layout import MoeDims, MoeLayout, moe_dims, moe_layout
from bricks.expert_mask.profile import ExpertProfile, profile_experts
from bricks.expert_mask.routing import apply_expert_masks, check_expert_masks, expert_density, kept_experts

__all__ = ["ExpertMaskBrick", "EXPERT_MASK_FILE", "MoeDims", "MoeLayout", "moe_dims", "moe_layout", "ExpertProfile",
           "profile_experts", "apply_expert_masks", "check_expert_masks", "expert_density", "kept_experts"]
