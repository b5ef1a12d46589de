"""Where a mixture-of-experts model's routers are: read from its config and its family's description.

A MoE decoder layer (`<layers>[i].<mlp>`, a MixtralSparseMoeBlock / Qwen2MoeSparseMoeBlock / Qwen3MoeSparseMoeBlock
in transformers 5) has a router `gate` (a TopKRouter module: `weight` [E, H], `top_k`) whose forward returns
`(router_logits [T, E], top_k_weights [T, k], top_k_index [T, k])`, and `experts` that run the chosen experts.
Qwen2/3-MoE keep some layers dense (`mlp_only_layers`, `decoder_sparse_step`): those have no router.
"""

from __future__ import annotations

from dataclasses import dataclass

from bricks.errors import IncompatibleBrickError
from bricks.families import FAMILIES, family_for, model_type_of

__all__ = ["MoeDims", "MoeLayout", "moe_dims", "moe_layout"]


def _moe_types() -> str:
    return ", ".join(sorted(t for t, f in FAMILIES.items() if f.ffn == "moe"))


@dataclass(frozen=True)
class MoeDims:
    """A MoE model's routing shape, from its config alone."""

    model_type: str
    num_layers: int
    num_experts: int  # E: routed experts per MoE layer
    top_k: int  # experts each token is routed to
    moe_layers: tuple[int, ...]  # the decoder layers that have a router (the others are dense)


def moe_dims(model_config) -> MoeDims:
    """The `MoeDims` of a transformers config; one IncompatibleBrickError when it is not a mixture of experts."""
    try:
        model_type, family = family_for(model_config)
    except IncompatibleBrickError:
        model_type, family = model_type_of(model_config), None
    if family is None or family.ffn != "moe":
        raise IncompatibleBrickError(f"model type {model_type!r} is not a mixture of experts; expert bricks need "
                                     f"one of {_moe_types()}")
    cfg = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    experts = getattr(cfg, "num_local_experts", None) or getattr(cfg, "num_experts", None)
    top_k = getattr(cfg, "num_experts_per_tok", None)
    if not experts or not top_k:
        raise IncompatibleBrickError(f"{model_type} config has no expert count (num_local_experts / num_experts: "
                                     f"{experts!r}) or num_experts_per_tok ({top_k!r})")
    dense = set(getattr(cfg, "mlp_only_layers", None) or ())
    step = int(getattr(cfg, "decoder_sparse_step", None) or 1)
    layers = int(cfg.num_hidden_layers)
    sparse = tuple(i for i in range(layers) if i not in dense and (i + 1) % step == 0)
    return MoeDims(model_type, layers, int(experts), int(top_k), sparse)


@dataclass(frozen=True)
class MoeLayout:
    """The router module of every MoE layer of a loaded model, with the model's `MoeDims`."""

    dims: MoeDims
    routers: dict  # layer index -> router module (the MoE block's `gate`)


def _layers(model, name: str):
    import torch.nn as nn

    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and path.rsplit(".", 1)[-1] == name and len(module):
            return module
    return None


def moe_layout(model) -> MoeLayout:
    """The routers of `model` (also inside a PeftModel); one IncompatibleBrickError naming what was found otherwise."""
    dims = moe_dims(model.config)
    _, family = family_for(model.config)
    layers = _layers(model, family.layers)
    if layers is None or len(layers) != dims.num_layers:
        raise IncompatibleBrickError(f"{dims.model_type}: no {dims.num_layers} decoder layers ({family.layers}) found")
    routers = {}
    for i in dims.moe_layers:
        block = getattr(layers[i], family.mlp, None)
        router = getattr(block, "gate", None)
        weight = getattr(router, "weight", None)
        if weight is None or tuple(weight.shape[:1]) != (dims.num_experts,) or not hasattr(router, "top_k"):
            found = type(router).__name__ if router is not None else "nothing"
            raise IncompatibleBrickError(f"{dims.model_type}: {family.layers}.{i}.{family.mlp}.gate is {found}; "
                                         f"expected a top-k router with weight [{dims.num_experts}, hidden]")
        routers[i] = router
    return MoeLayout(dims, routers)
