"""Streaming items through a model in batches with hooks attached: the loop every profiler shares.

    handles = layout.hook_neuron_inputs(make_hook)
    seen = feed_batches(model, items, 64, run, handles, on_batch)   # run(batch) per batch; hooks removed after

`right_padded` builds a batch whose prompts all start at column 0 (causal attention leaves real tokens unaffected
by the padding after them), as statistics over prompt tokens want.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

__all__ = ["feed_batches", "right_padded"]

T = TypeVar("T")


def right_padded(encoded: Sequence[Sequence[int]], pad: int):
    """(input_ids, attention_mask) [B, T]: each row's tokens from column 0, then `pad`."""
    import torch

    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for r, e in enumerate(encoded):
        ids[r, : len(e)] = torch.tensor(list(e))
        mask[r, : len(e)] = 1
    return ids, mask


def feed_batches(model, items: Iterable[T], batch_size: int, run: Callable[[list[T]], Any], handles: Sequence = (),
                 on_batch: Callable[[int], None] | None = None) -> int:
    """`run(batch)` on `items` in batches of `batch_size` with `model` in eval mode; `on_batch(items so far)`
    after each batch. The hook `handles` are removed and the model's training mode restored at the end, even
    on error. Returns the number of items run."""
    was_training = model.training
    model.eval()
    seen = 0
    try:
        batch: list[T] = []
        for item in items:
            batch.append(item)
            if len(batch) == batch_size:
                run(batch)
                seen += len(batch)
                batch = []
                if on_batch:
                    on_batch(seen)
        if batch:
            run(batch)
            seen += len(batch)
            if on_batch:
                on_batch(seen)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return seen
