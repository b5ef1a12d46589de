"""A neuron mask per row: one batch in which each row runs on its own part of the FFN (or on all of it).

The per-request mask slot of the vLLM worker, for a transformers model: a pre-hook on each down projection
multiplies the neurons' activations by the row's mask,

    act: [N, T, I] * scale[layer]: [N, 1, I]  ->  [N, T, I]      (1 where a row keeps a neuron, else 0)

so rows with no mask, and layers a row's mask does not list, run dense. Same outputs as `apply_masks` on each
row alone; no FLOP is saved (that is `compact_ffn`, which needs one mask for the whole batch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

from bricks.emergent.layout import ffn_layout
from bricks.emergent.masking import kept_neurons
from bricks.errors import ConfigError

__all__ = ["row_masks"]

Masks = Mapping[int, "object"]


@contextlib.contextmanager
def row_masks(model, rows: Sequence[Masks | None], modes: Sequence[str]) -> Iterator[None]:
    """Within the block, row i of every batch runs with neuron mask `rows[i]` in mode `modes[i]` (keep or ablate;
    None: all neurons). The model's batches must have exactly `len(rows)` rows."""
    import torch

    if len(rows) != len(modes):
        raise ConfigError(f"{len(rows)} row masks but {len(modes)} modes")
    layout = ffn_layout(model)
    n, size = len(rows), layout.intermediate_size
    scales: dict[int, torch.Tensor] = {}
    for i, (masks, mode) in enumerate(zip(rows, modes)):
        for layer, keep in kept_neurons(masks or {}, mode).items():
            if not 0 <= layer < layout.num_layers or keep.dim() != 1 or keep.numel() != size:
                raise ConfigError(f"row {i}: mask for layer {layer} of shape {list(keep.shape)} does not fit a model "
                                  f"of {layout.num_layers} layers x {size} neurons")
            if layer not in scales:
                scales[layer] = torch.ones(n, size)  # [N, I]
            scales[layer][i] = keep.float()
    handles = []
    for layer, scale in scales.items():
        down = layout.down(layer)
        weight = getattr(down, "base_layer", down).weight
        scale = scale.to(weight.device).unsqueeze(1)  # [N, 1, I], where the layer runs

        def pre(module, args, scale=scale, layer=layer):
            if args[0].shape[0] != n:
                raise ConfigError(f"layer {layer}: a batch of {args[0].shape[0]} rows, but masks were given for {n}")
            return (args[0] * scale.to(args[0].dtype),) + tuple(args[1:])

        handles.append(down.register_forward_pre_hook(pre))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
