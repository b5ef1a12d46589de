"""Streaming items through a model in batches with hooks attached: the loop every profiler shares.

    handles = layout.hook_neuron_inputs(make_hook)
    seen = feed_batches(model, items, 64, run, handles, on_batch)   # run(batch) per batch; hooks removed after

`right_padded` builds a batch whose prompts all start at column 0 (causal attention leaves real tokens unaffected
by the padding after them), as statistics over prompt tokens want; `left_padded` one whose prompts all end at the
last column, as generation wants.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

__all__ = ["feed_batches", "right_padded", "left_padded"]

T = TypeVar("T")


def right_padded(encoded: Sequence[Sequence[int]], pad: int):
    """(input_ids, attention_mask) [B, T]: each row's tokens from column 0, then `pad`."""
    return _padded(encoded, pad, None, left=False)


def left_padded(encoded: Sequence[Sequence[int]], pad: int, width: int | None = None):
    """(input_ids, attention_mask) [B, width (default: the longest row)]: `pad`, then each row's tokens ending at
    the last column, as generation wants them."""
    return _padded(encoded, pad, width, left=True)


def _padded(encoded: Sequence[Sequence[int]], pad: int, width: int | None, *, left: bool):
    import torch

    lengths = [len(e) for e in encoded]
    width = max(lengths, default=0) if width is None else width
    if any(n > width for n in lengths):
        raise ValueError(f"a row of {max(lengths)} tokens does not fit a width of {width}")
    cols = torch.arange(width)  # [W]
    n = torch.tensor(lengths, dtype=torch.long)[:, None]  # [B, 1]
    mask = (cols >= width - n) if left else (cols < n)  # [B, W]: each row's tokens, in order, row by row
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    ids[mask] = torch.tensor([t for e in encoded for t in e], dtype=torch.long)
    return ids, mask.long()


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
