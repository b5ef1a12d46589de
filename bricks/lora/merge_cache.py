"""A bounded cache of merged adapters: least recently used entries go first, beyond a count and a byte budget."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["MergeCache", "MergeStats"]

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass
class MergeStats:
    """Merged adapters computed (`merges`, `merge_ms`), lookups served (`hits`) or not (`misses`), entries
    dropped (`evictions`), and what the cache holds now (`size` entries, `bytes`)."""

    merges: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    size: int = 0
    bytes: int = 0
    merge_ms: float = 0.0


class MergeCache(Generic[K, V]):
    """An LRU map bounded by `max_items` entries and `max_bytes` (None: no byte bound) of their sizes.

    `on_evict(key, value)` releases what an evicted entry holds (a PEFT adapter, a folder on disk). Keys in use
    are `pinned` and never evicted; the entry just `put` is not evicted by that put either (it is about to be
    used), so the cache can exceed its bounds only by pinned entries and that one, until the next put or unpin.
    """

    def __init__(self, max_items: int = 16, max_bytes: int | None = None,
                 on_evict: Callable[[K, V], None] | None = None) -> None:
        if max_items < 1:
            raise ValueError(f"merge cache size must be at least 1, got {max_items}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"merge cache bytes must be positive or None, got {max_bytes}")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.on_evict = on_evict
        self.stats = MergeStats()
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()  # least recently used first
        self._pins: Counter[K] = Counter()
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> list[K]:
        """The keys held, least recently used first."""
        return list(self._entries)

    @property
    def nbytes(self) -> int:
        return self.stats.bytes

    def get(self, key: K, *, count: bool = True) -> V | None:
        """The value of `key` (now the most recently used), or None; counted as a hit or a miss unless `count`
        is False."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                if count:
                    self.stats.misses += 1
                return None
            self._entries.move_to_end(key)
            if count:
                self.stats.hits += 1
            return entry[0]

    def put(self, key: K, value: V, nbytes: int = 0) -> list[K]:
        """Hold `value` under `key` as the most recently used entry; returns the keys evicted to fit it."""
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.stats.bytes -= old[1]
            self._entries[key] = (value, nbytes)
            self.stats.bytes += nbytes
            self.stats.size = len(self._entries)
            return self.trim(keep=key)

    def _over(self) -> bool:
        return len(self._entries) > self.max_items or (self.max_bytes is not None and self.stats.bytes > self.max_bytes)

    def trim(self, keep: K | None = None) -> list[K]:
        """Evict least recently used entries, except pinned ones and `keep`, while the cache is over a bound."""
        evicted: list[K] = []
        with self._lock:
            for key in list(self._entries):
                if not self._over():
                    break
                if key == keep or self._pins[key]:
                    continue
                value, nbytes = self._entries.pop(key)
                self.stats.bytes -= nbytes
                self.stats.evictions += 1
                self.stats.size = len(self._entries)
                evicted.append(key)
                if self.on_evict is not None:
                    try:
                        self.on_evict(key, value)
                    except Exception as e:  # noqa: BLE001 - the entry is gone either way; say what leaked
                        log.warning("merge cache: releasing evicted %s failed: %s", key, e)
            if self._over():
                log.info("merge cache over its bounds while %d entries are in use (%d entries, %d bytes)",
                         sum(1 for k in self._entries if self._pins[k] or k == keep), len(self._entries),
                         self.stats.bytes)
        if evicted:
            log.debug("merge cache evicted %s", evicted)
        return evicted

    @contextlib.contextmanager
    def pinned(self, keys: Iterable[K]) -> Iterator[None]:
        """Within the block, never evict `keys` (the entries a running call uses); trim when it ends."""
        keys = list(dict.fromkeys(keys))
        with self._lock:
            self._pins.update(keys)
        try:
            yield
        finally:
            with self._lock:
                self._pins.subtract(keys)
                self._pins += Counter()  # drop zero counts
                self.trim()
