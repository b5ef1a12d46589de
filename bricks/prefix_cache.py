"""Prefix caching across batches: the keys and values of prompt beginnings that requests repeat (a template, an
instruction, a system prompt), kept from one batch to the next, so that a later batch computes only the rest.

    store = PrefixCache(max_bytes=256 * 2**20)
    cache = prefill_cached(model, encoded, plan, keys, pad, device, store)     # a batch's shared prefixes
    found = store.longest(key, ids, len(ids) - 1)                                 # one row: (n, layers) or None

An entry is one brick configuration's (`key`) KV of one exact token prefix: per layer (keys, values)
[1, heads, n, head_dim], positions 0..n-1, as the row would compute them alone. A batch's shared prefixes (groups
of two rows or more, `bricks.prefix_share`) are looked up exactly and stored when computed; a lone request reuses
the longest stored prefix of its prompt and stores its own prompt's first whole blocks of `block` tokens (so the
next request with the same start reuses them). Least recently used entries leave beyond `max_bytes`.

Only for models whose every cache layer is a plain `DynamicLayer` (`cacheable`): a sliding window or a hybrid
cache keeps other state. Entries are valid while the model's weights and adapters stay as they were: the executor
clears the store when it loads or deletes an adapter.
"""

from __future__ import annotations

import contextlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bricks.prefix_share import PrefixPlan, prefill_padded

__all__ = ["PrefixCache", "PrefixCacheStats", "cacheable", "prefill_cached", "fill_cache", "prompt_layers"]

Layers = list[tuple[Any, Any]]  # per layer (keys, values) [1, heads, n, head_dim]


@dataclass
class PrefixCacheStats:
    """Lookups, hits and the prompt tokens hits skipped; entries stored and evicted; what the store holds now."""

    lookups: int = 0
    hits: int = 0
    hit_tokens: int = 0
    stored: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0


def _nbytes(layers: Layers) -> int:
    return sum(t.numel() * t.element_size() for pair in layers for t in pair)


class PrefixCache:
    """An LRU store of prefix KV entries keyed by (configuration key, token ids), bounded by `max_bytes`."""

    def __init__(self, max_bytes: int = 256 * 2**20, block: int = 16) -> None:
        if max_bytes < 0 or block < 1:
            raise ValueError(f"max_bytes {max_bytes} must be >= 0 and block {block} >= 1")
        self.max_bytes = max_bytes
        self.block = block
        self.stats = PrefixCacheStats()
        self._entries: OrderedDict[tuple[str, tuple[int, ...]], tuple[Layers, int]] = OrderedDict()
        self._lengths: dict[str, Counter[int]] = {}  # key -> how many entries of each length

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[tuple[str, int]]:
        """(key, prefix length) of every entry, least recently used first."""
        return [(key, len(ids)) for key, ids in self._entries]

    def get(self, key: str, ids: Sequence[int]) -> Layers | None:
        """The entry of exactly `ids` under `key`, or None (counted as a lookup)."""
        self.stats.lookups += 1
        return self._hit((key, tuple(ids)))

    def longest(self, key: str, ids: Sequence[int], limit: int) -> tuple[int, Layers] | None:
        """(n, layers) of the longest stored prefix ids[:n] under `key` with n <= `limit`, or None."""
        self.stats.lookups += 1
        for n in sorted(self._lengths.get(key, ()), reverse=True):
            if 1 <= n <= limit and (found := self._hit((key, tuple(ids[:n])))) is not None:
                return n, found
        return None

    def _hit(self, entry: tuple[str, tuple[int, ...]]) -> Layers | None:
        """The layers of `entry`, made the most recently used and counted as a hit, or None."""
        found = self._entries.get(entry)
        if found is None:
            return None
        self._entries.move_to_end(entry)
        self.stats.hits += 1
        self.stats.hit_tokens += len(entry[1])
        return found[0]

    def put(self, key: str, ids: Sequence[int], layers: Layers) -> None:
        """Store a copy of `layers` (the KV of `ids` under `key`); evicts the least recently used beyond
        `max_bytes`. An entry larger than the whole budget is not stored."""
        entry = (key, tuple(ids))
        if entry in self._entries or not ids:
            return
        copied = [(k.detach().clone(), v.detach().clone()) for k, v in layers]
        size = _nbytes(copied)
        if size > self.max_bytes:
            return
        self._entries[entry] = (copied, size)
        self._lengths.setdefault(key, Counter())[len(ids)] += 1
        self.stats.stored += 1
        self.stats.bytes += size
        while self.stats.bytes > self.max_bytes:
            self._evict()
        self.stats.entries = len(self._entries)

    def clear(self) -> None:
        """Forget every entry (the model's weights or adapters changed)."""
        self._entries.clear()
        self._lengths.clear()
        self.stats.entries = self.stats.bytes = 0

    def _evict(self) -> None:
        (key, ids), (_, size) = self._entries.popitem(last=False)
        lengths = self._lengths[key]
        lengths[len(ids)] -= 1
        if lengths[len(ids)] <= 0:
            del lengths[len(ids)]
        self.stats.bytes -= size
        self.stats.evictions += 1


def cacheable(cache) -> bool:
    """Whether every layer of `cache` (a transformers Cache) holds plain keys and values of every position: a
    `DynamicLayer` itself or a layer that says so (`plain_kv`, as `bricks.lean_decode.growing_cache`'s)."""
    from transformers.cache_utils import DynamicLayer

    return bool(cache.layers) and all(type(layer) is DynamicLayer or getattr(layer, "plain_kv", False)
                                      for layer in cache.layers)


def fill_cache(cache, layers: Sequence[tuple[Any, Any]]) -> None:
    """Write per-layer (keys, values) [rows, heads, n, head_dim] into an empty `cache` as its first positions."""
    for i, (k, v) in enumerate(layers):
        cache.update(k, v, i)


def prompt_layers(cache, row: int, n: int) -> Layers:
    """Row `row`'s first `n` cache positions of every layer ([1, heads, n, head_dim]): a row without left padding."""
    return [(layer.keys[row:row + 1, :, :n], layer.values[row:row + 1, :, :n]) for layer in cache.layers]


def prefill_cached(model, encoded: Sequence[Sequence[int]], plan: PrefixPlan, keys: Sequence[str], pad: int, device,
                   store: PrefixCache, context: Callable[[list[int]], Any] | None = None, cache=None):
    """`bricks.prefix_share.prefill_prefixes` with `store`: a group of two rows or more takes its prefix from the
    store when there (exact key and ids) and stores it when computed; the other groups are computed in one pass
    (in `context(their representative rows)`). Fills `cache` (default: a new `DynamicCache`) with every row's
    prefix, left-padded to the plan's width P, and returns it."""
    import torch
    from transformers import DynamicCache

    n_groups = len(plan.rep)
    rows_of = Counter(plan.group)
    prefix = [tuple(encoded[r][:n]) for r, n in zip(plan.rep, plan.length)]
    layers: dict[int, Layers] = {}
    for g in range(n_groups):
        if rows_of[g] > 1:
            found = store.get(keys[plan.rep[g]], prefix[g])
            if found is not None:
                layers[g] = found
    todo = [g for g in range(n_groups) if g not in layers]
    if todo:
        width = max(plan.length[g] for g in todo)
        scope = context([plan.rep[g] for g in todo]) if context is not None else contextlib.nullcontext()
        computed = prefill_padded(model, [prefix[g] for g in todo], pad, width, device, scope)
        for j, g in enumerate(todo):
            n = plan.length[g]
            layers[g] = [(layer.keys[j:j + 1, :, width - n:], layer.values[j:j + 1, :, width - n:])
                         for layer in computed.layers]
            if rows_of[g] > 1:
                store.put(keys[plan.rep[g]], prefix[g], layers[g])
    width = plan.width
    index = torch.tensor(plan.group, dtype=torch.long, device=device)
    cache = DynamicCache(config=model.config) if cache is None else cache
    for i in range(len(layers[0])):
        k0, v0 = layers[0][i]
        keys_i = k0.new_zeros((n_groups, k0.shape[1], width, k0.shape[3]))  # [groups, heads, P, d], left-padded
        values_i = v0.new_zeros((n_groups, v0.shape[1], width, v0.shape[3]))
        for g in range(n_groups):
            k, v = layers[g][i]
            keys_i[g, :, width - k.shape[2]:] = k[0].to(keys_i.device)
            values_i[g, :, width - v.shape[2]:] = v[0].to(values_i.device)
        index_i = index.to(keys_i.device)
        cache.update(keys_i.index_select(0, index_i), values_i.index_select(0, index_i), i)  # [rows, heads, P, d]
    return cache
