"""Run a model on part of its FFN neurons: masked (zero the others) or compact (gather the kept ones).

A mask is {layer: bool tensor [intermediate_size]}; layers it does not list run dense. `mode="keep"` runs
only the masked neurons, `mode="ablate"` runs all but them. A layer with no neuron left contributes nothing
(its FFN output is zero, or down's bias where it has one, and the residual stream passes through): a way to
skip FFNs, not an error.
Masked and compact give the same outputs; compact is cheaper, since the FFN matrices really shrink.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from bricks.emergent.compact_cache import CompactCache, shrink_layers
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
                             f"[{layout.intermediate_size}] ({layout.family.mlp}.{layout.family.down} input)")


@contextlib.contextmanager
def apply_masks(model, masks: Masks, mode: str = "keep") -> Iterator[None]:
    """Within the block, neurons outside the kept set output zero (a pre-hook on every masked down projection)."""
    layout = ffn_layout(model)
    _check(layout, masks)
    handles = []
    for layer, keep in kept_neurons(masks, mode).items():
        scale = keep.float().to(_linear(layout.down(layer)).weight.device)  # [I], where the layer runs

        def pre(module, args, scale=scale):
            return (args[0] * scale.to(args[0].dtype),) + tuple(args[1:])

        handles.append(layout.down(layer).register_forward_pre_hook(pre))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class _ZeroFfn:
    """An FFN with no neuron left: zero, plus down's bias in the families that have one (as when masked)."""

    def __init__(self, bias=None):
        self.bias = bias

    def __call__(self, x):
        return x * 0 if self.bias is None else x * 0 + self.bias.to(x.dtype)


def _linear(holder):
    return getattr(holder, "base_layer", holder)  # the plain Linear inside a PEFT LoRA wrapper


def _put(mlp, name: str, lin) -> None:
    holder = getattr(mlp, name)
    if hasattr(holder, "base_layer"):
        holder.base_layer = lin
    else:
        setattr(mlp, name, lin)


@contextlib.contextmanager
def compact_ffn(model, masks: Masks, mode: str = "keep", cache: CompactCache | None = None) -> Iterator[None]:
    """Within the block, every masked layer's FFN projections (gate/up/down, a fused gate_up, or up/down without
    a gate; see bricks.families) are replaced by matrices of the kept neurons only.

    The matrices are gathered on every call, or once per mask while `cache` (a CompactCache) holds them.
    Run it with no LoRA adapter active (inside PEFT's `disable_adapter()` the plain Linear inside each LoRA
    wrapper is swapped); the original modules are put back on exit.
    """
    layout = ffn_layout(model)
    _check(layout, masks)
    kept = kept_neurons(masks, mode)
    built = cache.shrunk(model, layout, kept) if cache is not None else shrink_layers(layout, kept)
    names = layout.projections()
    saved = []
    try:
        for layer, small in built.items():
            mlp = layout.mlps[layer]
            saved.append((mlp, {n: _linear(getattr(mlp, n)) for n in names}))
            if small is None:  # no neuron left
                mlp.forward = _ZeroFfn(_linear(layout.down(layer)).bias)
                continue
            for name, module in small.items():  # gate/up rows and down columns of the kept neurons
                _put(mlp, name, module)
        yield
    finally:
        for mlp, originals in reversed(saved):
            for name, module in originals.items():
                _put(mlp, name, module)
            if isinstance(mlp.__dict__.get("forward"), _ZeroFfn):
                del mlp.forward
