"""Run a model on part of its FFN neurons: masked (zero the others) or compact (gather the kept ones).

A mask is {layer: bool tensor [intermediate_size]}; layers it does not list run dense. `mode="keep"` runs
only the masked neurons, `mode="ablate"` runs all but them. A layer with no neuron left contributes nothing
(its FFN output is zero and the residual stream passes through): a way to skip FFNs, not an error.
Masked and compact give the same outputs; compact is cheaper, since the FFN matrices really shrink.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from bricks.emergent.layout import ffn_layout
from bricks.errors import ConfigError

__all__ = ["apply_masks", "compact_ffn", "mask_density", "kept_neurons"]

Masks = Mapping[int, "object"]


def kept_neurons(masks: Masks, mode: str) -> dict[int, "object"]:
    """The neurons that run, per listed layer: the mask (keep) or its complement (ablate)."""
    if mode not in ("keep", "ablate"):
        raise ConfigError(f"unknown mask mode {mode!r}; expected 'keep' or 'ablate'")
    return {layer: (m.bool() if mode == "keep" else ~m.bool()) for layer, m in masks.items()}


def mask_density(masks: Masks, num_layers: int, intermediate_size: int) -> float:
    """Share of all FFN neurons in the mask (unlisted layers count as fully in)."""
    total = num_layers * intermediate_size
    inside = sum(int(masks[i].sum()) if i in masks else intermediate_size for i in range(num_layers))
    return inside / total if total else 0.0


def _check(layout, masks: Masks) -> None:
    for layer, m in masks.items():
        if not 0 <= layer < layout.num_layers:
            raise ConfigError(f"mask for layer {layer}, but the model has layers 0..{layout.num_layers - 1}")
        if m.dim() != 1 or m.numel() != layout.intermediate_size:
            raise ConfigError(f"mask for layer {layer} has shape {list(m.shape)}, expected "
                             f"[{layout.intermediate_size}] (mlp.down_proj input)")


@contextlib.contextmanager
def apply_masks(model, masks: Masks, mode: str = "keep") -> Iterator[None]:
    """Within the block, neurons outside the kept set output zero (a pre-hook on every masked down_proj)."""
    layout = ffn_layout(model)
    _check(layout, masks)
    handles = []
    for layer, keep in kept_neurons(masks, mode).items():
        scale = keep.float()  # [I]

        def pre(module, args, scale=scale):
            return (args[0] * scale.to(args[0].dtype),) + tuple(args[1:])

        handles.append(layout.mlps[layer].down_proj.register_forward_pre_hook(pre))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class _ZeroFfn:
    def __call__(self, x):
        return x * 0


def _linear(holder):
    return getattr(holder, "base_layer", holder)  # the plain Linear inside a PEFT LoRA wrapper


def _put(mlp, name: str, lin) -> None:
    holder = getattr(mlp, name)
    if hasattr(holder, "base_layer"):
        holder.base_layer = lin
    else:
        setattr(mlp, name, lin)


@contextlib.contextmanager
def compact_ffn(model, masks: Masks, mode: str = "keep") -> Iterator[None]:
    """Within the block, every masked layer's gate/up/down are replaced by matrices of the kept neurons only.

    Run it with no LoRA adapter active (inside PEFT's `disable_adapter()` the plain Linear inside each LoRA
    wrapper is swapped); the original modules are put back on exit.
    """
    import torch
    import torch.nn as nn

    layout = ffn_layout(model)
    _check(layout, masks)
    saved = []
    try:
        for layer, keep in kept_neurons(masks, mode).items():
            mlp = layout.mlps[layer]
            gate, up, down = (_linear(getattr(mlp, n)) for n in ("gate_proj", "up_proj", "down_proj"))
            saved.append((mlp, gate, up, down))
            idx = keep.nonzero().flatten()  # [K]
            if idx.numel() == 0:
                mlp.forward = _ZeroFfn()
                continue
            with torch.no_grad():
                small = []
                for big in (gate, up):
                    lin = nn.Linear(big.in_features, idx.numel(), bias=big.bias is not None,
                                    dtype=big.weight.dtype, device=big.weight.device)
                    lin.weight.copy_(big.weight[idx])  # [K, H]
                    if big.bias is not None:
                        lin.bias.copy_(big.bias[idx])
                    small.append(lin)
                lin = nn.Linear(idx.numel(), down.out_features, bias=down.bias is not None,
                                dtype=down.weight.dtype, device=down.weight.device)
                lin.weight.copy_(down.weight[:, idx])  # [H, K]
                if down.bias is not None:
                    lin.bias.copy_(down.bias)
            _put(mlp, "gate_proj", small[0])
            _put(mlp, "up_proj", small[1])
            _put(mlp, "down_proj", lin)
        yield
    finally:
        for mlp, gate, up, down in reversed(saved):
            _put(mlp, "gate_proj", gate)
            _put(mlp, "up_proj", up)
            _put(mlp, "down_proj", down)
            if isinstance(mlp.__dict__.get("forward"), _ZeroFfn):
                del mlp.forward
