"""Shared-prefix prefill: rows of one batch whose prompts start alike compute that start once.

Requests that arrive together often repeat a prompt's beginning (the same instruction, template or system
prompt; only the input differs). On a small model most of a batch's time goes to the prefill, so computing each
distinct beginning once and reusing its keys and values for every row that starts with it saves most of it:

    plan = plan_prefixes(encoded, keys)      # which rows share which prefix (pure: no model)
    if plan.worth_it(encoded):
        cache = prefill_prefixes(model, encoded, plan, pad, device, context)  # KV [rows, heads, P, d] per layer
        ids, mask = shared_layout(encoded, plan, pad)                         # [rows, P + S]
        model.generate(input_ids=ids, attention_mask=mask, past_key_values=cache, ...)

Rows share a prefix only when they have the same key (their brick configuration: a LoRA or mask changes the keys
and values). Every row keeps at least its last prompt token out of the prefix, so `generate` has input to read.
The layout is each row's prefix left-padded to the longest prefix P, then its rest left-padded to the longest
rest S: padding may sit between the two, which the attention mask hides; positions count only real tokens
(`generate` numbers them from the mask), so a row sees the positions it would see alone. A sliding or chunked
attention window counts cache columns, padding included, so a model with one shares prefixes only while a row's
whole layout and its new tokens fit in the window (`attention_window`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["PrefixPlan", "PrefixStats", "plan_prefixes", "shared_layout", "prefill_prefixes", "attention_window"]


@dataclass
class PrefixStats:
    """Batches that shared prefixes, their rows, and the prompt tokens they skipped out of those they had."""

    batches: int = 0
    rows: int = 0
    saved_tokens: int = 0
    prompt_tokens: int = 0


@dataclass(frozen=True)
class PrefixPlan:
    """Rows grouped by a shared prefix: `group[r]` is row r's group, `rep[g]` a row of group g and `length[g]`
    the tokens its rows share (and compute once)."""

    group: tuple[int, ...]
    rep: tuple[int, ...]
    length: tuple[int, ...]

    @property
    def width(self) -> int:
        """P: the longest prefix."""
        return max(self.length, default=0)

    def saved_tokens(self) -> int:
        """Prefill tokens not computed: each group's prefix once instead of once per row."""
        rows = [0] * len(self.rep)
        for g in self.group:
            rows[g] += 1
        return sum((n - 1) * length for n, length in zip(rows, self.length))

    def worth_it(self, encoded: Sequence[Sequence[int]], min_fraction: float = 0.25) -> bool:
        """Whether the plan skips at least `min_fraction` of the batch's prompt tokens (and any at all)."""
        saved = self.saved_tokens()
        return saved > 0 and min(self.length) > 0 and saved >= min_fraction * sum(len(e) for e in encoded)


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def plan_prefixes(encoded: Sequence[Sequence[int]], keys: Sequence[str] | None = None,
                  min_shared: int = 4) -> PrefixPlan:
    """Group rows (token ids, with their configuration `keys`; None: all alike) by shared prefix: rows in sorted
    order join the group before them while they share at least `min_shared` tokens with all of it. A group's
    prefix is what its rows share, never a row's last token; a row alone keeps all but its last token as its own
    prefix (computed in the same pass as the shared ones)."""
    n = len(encoded)
    if n == 0:
        return PrefixPlan((), (), ())
    keys = keys if keys is not None else [""] * n
    order = sorted(range(n), key=lambda i: (keys[i], list(encoded[i])))
    group = [0] * n
    rep: list[int] = []
    length: list[int] = []
    for i in order:
        if rep:
            g = len(rep) - 1
            first = rep[g]
            shared = min(length[g], _common(encoded[first], encoded[i]), len(encoded[i]) - 1)
            if keys[i] == keys[first] and shared >= min_shared:
                group[i] = g
                length[g] = shared
                continue
        group[i] = len(rep)
        rep.append(i)
        length.append(len(encoded[i]) - 1)
    return PrefixPlan(tuple(group), tuple(rep), tuple(length))


def shared_layout(encoded: Sequence[Sequence[int]], plan: PrefixPlan, pad: int):
    """(input_ids, attention_mask) [rows, P + S]: row r's prefix left-padded to P, then its rest left-padded
    to S (the longest rest)."""
    import torch

    p = plan.width
    cut = [plan.length[plan.group[r]] for r in range(len(encoded))]
    s = max(len(e) - c for e, c in zip(encoded, cut))
    ids = torch.full((len(encoded), p + s), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), p + s), dtype=torch.long)
    for r, (e, c) in enumerate(zip(encoded, cut)):
        head, tail = list(e[:c]), list(e[c:])
        if head:
            ids[r, p - len(head):p] = torch.tensor(head)
            mask[r, p - len(head):p] = 1
        ids[r, p + s - len(tail):] = torch.tensor(tail)
        mask[r, p + s - len(tail):] = 1
    return ids, mask


def prefill_prefixes(model, encoded: Sequence[Sequence[int]], plan: PrefixPlan, pad: int, device,
                     context: Callable[[list[int]], Any] | None = None):
    """The KV cache of every row's prefix, P positions ([rows, heads, P, head_dim] per layer): each group's
    prefix computed once (left-padded to P, in `context(plan.rep)` when given: the groups' rows' LoRA and masks)
    and then copied to its rows."""
    import torch
    from transformers import DynamicCache

    p = plan.width
    ids = torch.full((len(plan.rep), p), pad, dtype=torch.long)
    mask = torch.zeros((len(plan.rep), p), dtype=torch.long)
    for g, (r, n) in enumerate(zip(plan.rep, plan.length)):
        if n:
            ids[g, p - n:] = torch.tensor(list(encoded[r][:n]))
            mask[g, p - n:] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate numbers them: real tokens only
    cache = DynamicCache(config=model.config)
    with context(list(plan.rep)) if context is not None else contextlib.nullcontext():
        model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
              logits_to_keep=1)
    cache.reorder_cache(torch.tensor(plan.group, dtype=torch.long, device=device))  # [groups] -> [rows]
    return cache


def attention_window(config) -> int | None:
    """The tokens a model's sliding (or chunked) attention layers see, or None when every layer sees them all."""
    windows = []
    sliding = getattr(config, "sliding_window", None)
    if isinstance(sliding, int) and sliding > 0 and getattr(config, "use_sliding_window", True) is not False:
        windows.append(sliding)
    chunk = getattr(config, "attention_chunk_size", None)
    if isinstance(chunk, int) and chunk > 0:
        windows.append(chunk)
    return min(windows, default=None)
