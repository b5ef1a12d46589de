"""Run a MoE model on a subset of its experts: the router's logits of the other experts are set to -inf before
its top-k, so every token is routed among the kept experts only (and the kept experts' weights renormalised as
the router does).

A mask is {layer: bool tensor [num_experts]}; MoE layers it does not list route over every expert. `mode="keep"`
keeps the masked experts, `mode="ablate"` all but them. A layer must keep at least num_experts_per_tok experts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from bricks.errors import ConfigError
from bricks.expert_mask.layout import MoeLayout, moe_layout

__all__ = ["apply_expert_masks", "kept_experts", "expert_density", "check_expert_masks"]

Masks = Mapping[int, "object"]  # layer index -> bool tensor [num_experts]


def kept_experts(masks: Masks, mode: str = "keep") -> dict[int, "object"]:
    """The experts the router may pick, per listed layer: the mask (keep) or its complement (ablate)."""
    if mode not in ("keep", "ablate"):
        raise ConfigError(f"unknown mask mode {mode!r}; expected 'keep' or 'ablate'")
    return {layer: (m.bool() if mode == "keep" else ~m.bool()) for layer, m in masks.items()}


def expert_density(masks: Masks, moe_layers, num_experts: int) -> float:
    """Share of all routed experts (over the MoE layers) the mask keeps; unlisted layers count as fully kept."""
    total = len(moe_layers) * num_experts
    inside = sum(int(masks[i].sum()) if i in masks else num_experts for i in moe_layers)
    return inside / total if total else 0.0


def check_expert_masks(layout: MoeLayout, kept: Masks) -> None:
    """One ConfigError for the first kept-expert set that the model's routers cannot use."""
    dims = layout.dims
    for layer, m in sorted(kept.items()):
        if layer not in layout.routers:
            raise ConfigError(f"expert mask for layer {layer}, but the MoE layers are {list(dims.moe_layers)}")
        if m.dim() != 1 or m.numel() != dims.num_experts:
            raise ConfigError(f"expert mask for layer {layer} has shape {list(m.shape)}, expected [{dims.num_experts}]")
        if int(m.sum()) < dims.top_k:
            raise ConfigError(f"expert mask for layer {layer} keeps {int(m.sum())} experts, fewer than "
                              f"num_experts_per_tok {dims.top_k}")


def _rerouted(router, output, drop):
    """The router's output recomputed with the experts `drop` [E] excluded (same arithmetic as the router)."""
    import torch

    if not (isinstance(output, tuple) and len(output) == 3):
        raise ConfigError(f"{type(router).__name__} returned {type(output).__name__}; expected (router_logits, "
                          "top_k_weights, top_k_index)")
    logits, scores, _ = output  # [T, E], [T, k], [T, k]
    drop = drop.to(logits.device)
    masked = logits.masked_fill(drop, float("-inf"))  # [T, E]
    probs = torch.softmax(masked.float(), dim=-1)  # [T, E]: 0 for dropped experts
    top, index = torch.topk(probs.masked_fill(drop, -1.0), router.top_k, dim=-1)  # [T, k], never a dropped one
    if getattr(router, "norm_topk_prob", True):  # Mixtral always renormalises; Qwen-MoE when configured
        top = top / top.sum(dim=-1, keepdim=True)
    return masked, top.to(scores.dtype), index


@contextlib.contextmanager
def apply_expert_masks(model, masks: Masks, mode: str = "keep") -> Iterator[None]:
    """Within the block, the routers of the masked layers pick their top-k among the kept experts only (a forward
    hook on each router that masks its logits with -inf and redoes its top-k)."""
    layout = moe_layout(model)
    kept = kept_experts(masks, mode)
    check_expert_masks(layout, kept)
    handles = []
    for layer, keep in kept.items():
        router = layout.routers[layer]
        drop = ~keep.to(router.weight.device)  # [E], where the layer runs

        def hook(module, args, output, drop=drop):
            return _rerouted(module, output, drop)

        handles.append(router.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
