"""Mask slots of vLLM's workers: which mask configurations are registered, and which running requests pin them.

The workers hold at most `max_masks` masks (`masks.MaskRows`). A call's masks are admitted together: once they
fit beside those pinned by running requests (others are removed, least recently used first), they are
registered and pinned, one count per request, until each request ends. Calls admit one at a time; a call
whose masks do not fit waits until running requests release enough.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["MaskSlots", "mask_parts"]


class MaskSlots:
    """Registered mask keys -> worker slot, with pins. `pack(config)` gives a config's packed mask; `rpc(name,
    args)` calls every worker and returns their answers; `on_loop(fn)` runs `fn(engine)` between engine steps."""

    def __init__(self, max_masks: int, pack: Callable[[Any], tuple], rpc: Callable[[str, tuple], list],
                 on_loop: Callable[[Callable[[Any], Any]], Any]) -> None:
        self.max_masks = max_masks
        self._pack, self._rpc, self._on_loop = pack, rpc, on_loop
        self.slots: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self._pins: Counter[str] = Counter()
        self._cond = threading.Condition()
        self._admit = threading.Lock()

    def admit(self, configs: Mapping[str, Any], counts: Mapping[str, int]) -> None:
        """Register `configs` ({mask key: config}) and pin each key `counts[key]` times; waits while they do not
        fit beside the pinned masks."""
        if not configs:
            return
        with self._admit:
            with self._cond:
                while not self._fits(configs):
                    self._cond.wait()
                self._pins.update(counts)
            try:
                self._on_loop(lambda engine: self._register(configs))
            except BaseException:
                self.release(counts)
                raise

    def release(self, counts: Mapping[str, int]) -> None:
        """Unpin: `counts[key]` requests of each key have ended."""
        with self._cond:
            self._pins.subtract(counts)
            self._pins = +self._pins  # keys at zero dropped
            self._cond.notify_all()

    def _fits(self, configs: Mapping[str, Any]) -> bool:
        missing = sum(key not in self.slots for key in configs)
        kept = sum(1 for key in self.slots if key in configs or self._pins[key])
        return kept + missing <= self.max_masks

    def _register(self, configs: Mapping[str, Any]) -> None:
        for key in configs:
            if key in self.slots:
                self.slots.move_to_end(key)
        for key, config in configs.items():
            if key in self.slots:
                continue
            while len(self.slots) >= self.max_masks:
                old = next(k for k in self.slots if k not in configs and not self._pins[k])
                self._rpc("brickwork_remove_mask", (old,))
                del self.slots[old]
            slots = set(self._rpc("brickwork_add_mask", (key, *self._pack(config))))
            if len(slots) != 1:
                raise RuntimeError(f"workers gave mask {key} different slots {sorted(slots)}")
            self.slots[key] = slots.pop()


def mask_parts(requests: Sequence, max_masks: int) -> list[list[int]]:
    """Indices of `requests` (GenerationRequests) in parts of at most `max_masks` distinct masks each (one part
    when they fit; requests without a mask go in the first)."""
    keys = list(dict.fromkeys(r.config.mask_key for r in requests if r.config.masks))
    if len(keys) <= max_masks:
        return [list(range(len(requests)))]
    part_of = {k: i // max_masks for i, k in enumerate(keys)}
    parts: list[list[int]] = [[] for _ in range(-(-len(keys) // max_masks))]
    for i, r in enumerate(requests):
        parts[part_of[r.config.mask_key] if r.config.masks else 0].append(i)
    return parts
