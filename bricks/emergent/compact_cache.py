"""Compact FFN matrices built once per (model, kept neurons) and kept, least recently used first out, within a
byte budget.

`compact_ffn(model, masks, mode, cache=cache)` asks the cache for each layer's shrunk projections instead of
gathering them on every call. The key is the model's identity and a digest of the kept neurons per layer (so
keep-mask M and ablate-mask ~M share an entry); an entry also records which weights it was gathered from
(module, storage, version counter), and is rebuilt when they changed (new weights loaded, a LoRA merged in).
Reusing the same tensors is what lets a CUDA-graph decode step (bricks.fast_decode) replay for a mask it has
seen. An entry larger than the whole budget is built, used and not kept.

Imports only torch (the GPU benchmark loads it without brickwork's other dependencies).
"""

from __future__ import annotations

import hashlib
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from bricks.errors import ConfigError

__all__ = ["CompactCache", "CompactStats", "shrink_layers"]

Shrunk = dict  # {layer: {projection name: module} | None (no neuron left)}


@dataclass
class CompactStats:
    """Entries built (`builds`, `build_ms`; `stale`: rebuilt because the weights changed), lookups served
    (`hits`), entries dropped (`evictions`), and what the cache holds now (`entries`, `bytes`)."""

    builds: int = 0
    hits: int = 0
    stale: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0
    build_ms: float = 0.0


def _plain(holder):
    return getattr(holder, "base_layer", holder)  # the plain Linear inside a PEFT LoRA wrapper


def shrink_layers(layout, kept: Mapping[int, object]) -> Shrunk:
    """{layer: {projection: module with only the kept neurons}} for every layer in `kept` ([I] bool each);
    None for a layer with no neuron kept."""
    out: Shrunk = {}
    for layer, keep in kept.items():
        idx = keep.nonzero().flatten().to(_plain(layout.down(layer)).weight.device)  # [K], on the layer's device
        out[layer] = layout.shrunk(layer, idx) if idx.numel() else None
    return out


def _digest(kept: Mapping[int, object]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for layer in sorted(kept):
        keep = kept[layer]
        h.update(layer.to_bytes(4, "little") + keep.numel().to_bytes(8, "little"))
        h.update(keep.detach().to("cpu").contiguous().numpy().tobytes())  # one byte per neuron
    return h.hexdigest()


def _sources(layout, layers) -> tuple:
    """What each layer's entry is gathered from: (module id, storage pointer, version counter) per projection."""
    out = []
    for layer in sorted(layers):
        for name in layout.projections():
            w = _plain(getattr(layout.mlps[layer], name)).weight
            out.append((layer, name, id(w), w.data_ptr(), _version(w)))
    return tuple(out)


def _version(w) -> int:
    try:
        return w._version
    except RuntimeError:  # an inference tensor has no version counter (and cannot be changed in place)
        return -1


def _nbytes(shrunk: Shrunk) -> int:
    return sum(p.numel() * p.element_size() for mods in shrunk.values() if mods
               for m in mods.values() for p in m.parameters())


class CompactCache:
    """Shrunk FFN projections per (model, kept neurons), at most `max_bytes` of their weights (LRU)."""

    def __init__(self, max_bytes: int = 4 * 2**30) -> None:
        if not isinstance(max_bytes, int) or max_bytes < 1:
            raise ConfigError(f"compact cache max_bytes must be a positive int, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self.stats = CompactStats()
        self._entries: OrderedDict[tuple, tuple] = OrderedDict()  # key -> (model ref, sources, shrunk, bytes)
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every entry (the modules stay alive while a model still uses them)."""
        with self._lock:
            self._entries.clear()
            self.stats.entries = self.stats.bytes = 0

    def shrunk(self, model, layout, kept: Mapping[int, object]) -> Shrunk:
        """The shrunk projections of `kept` ({layer: [I] bool}) on `model` (whose FFN layout is `layout`),
        built now unless held from an earlier call on the same weights."""
        key = (id(model), _digest(kept))
        sources = _sources(layout, kept)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0]() is model and entry[1] == sources:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return entry[2]
            if entry is not None:  # the same id for another model, or weights that changed since
                self._drop(key)
                self.stats.stale += 1
            start = time.perf_counter()
            built = shrink_layers(layout, kept)
            self.stats.builds += 1
            self.stats.build_ms += (time.perf_counter() - start) * 1000
            size = _nbytes(built)
            if size <= self.max_bytes:
                self._entries[key] = (weakref.ref(model), sources, built, size)
                self.stats.bytes += size
                while self.stats.bytes > self.max_bytes:
                    self._drop(next(iter(self._entries)))
                    self.stats.evictions += 1
            self.stats.entries = len(self._entries)
            return built

    def _drop(self, key: tuple) -> None:
        entry = self._entries.pop(key)
        self.stats.bytes -= entry[3]
        self.stats.entries = len(self._entries)
