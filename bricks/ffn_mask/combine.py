"""Mask merging: the union or intersection of several emergent bricks' neuron sets, per layer.

A layer that a mask does not list runs dense (every neuron active). So in a union, a layer missing from any
mask stays dense; in an intersection, a layer is limited by every mask that lists it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from bricks.errors import ConfigError

__all__ = ["combine_masks"]

LayerMasks = Mapping[int, "object"]  # layer index -> bool tensor [intermediate_size]


def combine_masks(masks: Sequence[LayerMasks], mode: Literal["union", "intersection"]) -> dict[int, "object"]:
    """The per-layer union or intersection of `masks` (see the module docstring for unlisted layers)."""
    if mode not in ("union", "intersection"):
        raise ConfigError(f"unknown mask merge {mode!r}; expected 'union' or 'intersection'")
    if not masks:
        return {}
    layers = set().union(*(m.keys() for m in masks))
    out: dict[int, object] = {}
    for layer in sorted(layers):
        listed = [m[layer].bool() for m in masks if layer in m]
        sizes = {t.numel() for t in listed}
        if len(sizes) != 1:
            raise ConfigError(f"layer {layer}: masks of different sizes {sorted(sizes)} cannot be combined")
        if mode == "union":
            if len(listed) < len(masks):
                continue  # some brick leaves this layer dense
            acc = listed[0].clone()
            for t in listed[1:]:
                acc |= t
        else:
            acc = listed[0].clone()
            for t in listed[1:]:
                acc &= t
        out[layer] = acc
    return out
