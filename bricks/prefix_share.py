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

from bricks.prompt_batches import left_padded

__all__ = ["PrefixPlan", "PrefixStats", "plan_prefixes", "shared_layout", "prefill_prefixes", "prefill_padded",
           "attention_window"]


@dataclass
class PrefixStats:
    """Batches that shared prefixes, their rows, and the prompt tokens they skipped out of those they had."""

    batches: int = 0
    rows: int = 0
    saved_tokens: int = 0
    prompt_tokens: int = 0

    def count(self, plan: PrefixPlan, encoded: Sequence[Sequence[int]]) -> None:
        """Count a batch of `encoded` rows that shared prefixes as `plan` says."""
        self.batches += 1
        self.rows += len(encoded)
        self.saved_tokens += plan.saved_tokens()
        self.prompt_tokens += sum(len(e) for e in encoded)


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

    def cuts(self, rows: int) -> list[int]:
        """Each row's prefix length."""
        return [self.length[self.group[r]] for r in range(rows)]

    def layout_width(self, encoded: Sequence[Sequence[int]]) -> int:
        """P + S: the columns of `shared_layout`, S being the longest rest."""
        return self.width + max(len(e) - c for e, c in zip(encoded, self.cuts(len(encoded))))

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

    cuts = plan.cuts(len(encoded))
    heads = left_padded([e[:c] for e, c in zip(encoded, cuts)], pad, plan.width)
    tails = left_padded([e[c:] for e, c in zip(encoded, cuts)], pad)
    return torch.cat([heads[0], tails[0]], 1), torch.cat([heads[1], tails[1]], 1)


def prefill_prefixes(model, encoded: Sequence[Sequence[int]], plan: PrefixPlan, pad: int, device,
                     context: Callable[[list[int]], Any] | None = None, cache=None):
    """The KV cache of every row's prefix, P positions ([rows, heads, P, head_dim] per layer): each group's
    prefix computed once (left-padded to P, in `context(plan.rep)` when given: the groups' rows' LoRA and masks)
    and then copied to its rows. `cache`: an empty cache to fill (default: a new `DynamicCache`)."""
    import torch

    prefixes = [encoded[r][:n] for r, n in zip(plan.rep, plan.length)]
    scope = context(list(plan.rep)) if context is not None else contextlib.nullcontext()
    cache = prefill_padded(model, prefixes, pad, plan.width, device, scope, cache)
    cache.reorder_cache(torch.tensor(plan.group, dtype=torch.long, device=device))  # [groups] -> [rows]
    return cache


def prefill_padded(model, prefixes: Sequence[Sequence[int]], pad: int, width: int, device, scope, cache=None):
    """One forward pass over `prefixes` left-padded to `width`, inside the context manager `scope`, positions
    counting real tokens only (as generate numbers them); returns `cache` (default: a new `DynamicCache`) holding
    their keys and values, [len(prefixes), heads, width, head_dim] per layer."""
    from transformers import DynamicCache

    ids, mask = left_padded(prefixes, pad, width)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config) if cache is None else cache
    with scope:
        model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
              logits_to_keep=1)
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
