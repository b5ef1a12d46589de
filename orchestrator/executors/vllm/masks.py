"""Per-token FFN neuron masks for a batch that mixes requests with different masks (pure torch, no vLLM).

vLLM carries a token -> LoRA-slot index in a persistent device buffer, updated in place before each step, so that
one batch serves many adapters and a compiled or CUDA-graph-captured model sees each step's mapping. `MaskTable`
carries a token -> mask-slot index the same way: `token_slots` (long [max tokens]) is written in place before each
step, and `rows` (one [L, slots, I_local] tensor, allocated once) holds each registered mask's rows, written in
place when a mask is registered. Slot 0 is "no mask" (every neuron runs). A layer's FFN activations [T, I_local]
are multiplied by the rows of their tokens' slots: a gather and a multiply, pure tensor work that a compiled
graph or a CUDA graph replays with whatever masks the buffers hold (`apply_static`).

In eager mode (`static=False`) the table also keeps the step's masks as Python values and takes shortcuts: a
batch without masks is left alone, a batch whose tokens share one mask is multiplied by that row, and, when no
LoRA runs in it, computed with compact matrices (the kept rows of gate/up and columns of down, built when the
mask is registered), so FLOPs really drop. Those shortcuts branch on Python state, which a trace would freeze, so
a static table never takes them (compact FFN is off when the model is compiled or graph-captured).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from bricks.errors import ConfigError

__all__ = ["MaskTable", "BatchMasks", "pack_mask", "unpack_mask"]


def pack_mask(kept: Mapping[int, "object"], num_layers: int, intermediate_size: int) -> tuple[bytes, int, int]:
    """{layer: bool [I]} of the neurons that run (unlisted layers run dense) -> packed bits of a [L, I] matrix."""
    import numpy as np

    beyond = sorted(layer for layer in kept if not 0 <= int(layer) < num_layers)
    if beyond:
        raise ConfigError(f"mask names layers {beyond}, but the model has {num_layers} layers "
                         f"(0..{num_layers - 1})")
    dense = np.ones((num_layers, intermediate_size), dtype=bool)
    for layer, m in kept.items():
        row = m.cpu().numpy().astype(bool)
        if row.shape != (intermediate_size,):
            raise ConfigError(f"mask of layer {layer} has {list(row.shape)} neurons, expected [{intermediate_size}]")
        dense[layer] = row
    return np.packbits(dense).tobytes(), num_layers, intermediate_size


def unpack_mask(packed: bytes, num_layers: int, intermediate_size: int):
    """The bool [L, I] tensor that `pack_mask` packed."""
    import numpy as np
    import torch

    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=num_layers * intermediate_size)
    return torch.from_numpy(bits.reshape(num_layers, intermediate_size).astype(bool))


@dataclass(frozen=True)
class BatchMasks:
    """The masks of one forward pass, as Python values (eager shortcuts and counters only)."""

    uniform: int | None  # the slot every token uses (0: none), or None when tokens differ
    tokens: int = 0  # tokens of the step written to `token_slots`
    any_lora: bool = False  # some token runs a LoRA adapter (compact matrices would bypass it)


class MaskTable:
    """Mask rows per layer and slot on one worker; `shard` selects this tensor-parallel rank's neurons.

    `max_masks` masks fit (slots 1..max_masks; the rows are allocated once, so their address never changes); a
    removed mask's slot is reused by the next one added. `max_tokens` bounds the tokens of one step. With
    `compact`, compact matrices are built when a mask is registered, for at most `compact_cache_masks` masks (the
    least recently run lose theirs first, and then run masked): each holds a fraction of the FFN weights, which
    for a real model is gigabytes. `static`: the model is compiled or graph-captured; no Python shortcuts."""

    def __init__(self, num_layers: int, intermediate_size: int, *, dtype, device, shard: slice | None = None,
                 compact: bool = True, compact_cache_masks: int = 8, max_masks: int = 64, max_tokens: int = 8192,
                 static: bool = False) -> None:
        import torch

        if compact_cache_masks < 1 or max_masks < 1 or max_tokens < 1:
            raise ConfigError(f"compact_cache_masks, max_masks and max_tokens must be at least 1, got "
                             f"{compact_cache_masks}, {max_masks} and {max_tokens}")
        self.num_layers, self.intermediate_size = num_layers, intermediate_size
        self.shard = shard or slice(0, intermediate_size)
        self.dtype, self.device, self.static = dtype, device, static
        self.compact = compact and not static
        self.max_masks = max_masks
        width = self.shard.stop - self.shard.start
        self.rows = torch.ones((num_layers, max_masks + 1, width), dtype=dtype, device=device)  # [L, S, I_local]
        self.token_slots = torch.zeros(max_tokens, dtype=torch.long, device=device)  # [max tokens]
        self.slots: dict[str, int] = {}
        self._kept: list = [None] * (max_masks + 1)  # per slot: long indices of kept local neurons per layer
        self._compact_cache: dict[int, list] = {}  # slot -> per layer (gate_up [2K, H], down [H, K])
        self._compact_order: OrderedDict[int, None] = OrderedDict()  # slots with compact matrices, oldest first
        self.compact_cache_masks = compact_cache_masks
        self._free: list[int] = list(range(max_masks, 0, -1))  # free slots, the lowest taken first
        self.batch = BatchMasks(uniform=0)
        self.passes = {"none": 0, "uniform": 0, "compact": 0, "mixed": 0}  # forward passes by how masks ran

    def add(self, key: str, dense, load: Callable | None = None) -> int:
        """Register a bool [L, I] mask under `key` (idempotent); returns its slot. `load(layer)` gives this rank's
        (gate, up, down) FFN weights for compact matrices (read here, never in a forward pass)."""
        if key in self.slots:
            return self.slots[key]
        if tuple(dense.shape) != (self.num_layers, self.intermediate_size):
            raise ConfigError(f"mask {key!r} has shape {list(dense.shape)}, expected "
                             f"[{self.num_layers}, {self.intermediate_size}] (the model's {self.num_layers} layers x "
                             f"{self.intermediate_size} FFN neurons)")
        if not self._free:
            raise ConfigError(f"no free mask slot for {key!r}: all {self.max_masks} are registered")
        local = dense[:, self.shard]
        slot = self._free.pop()
        self.rows[:, slot].copy_(local.to(device=self.device, dtype=self.dtype))  # in place: no new address
        self._kept[slot] = [local[layer].nonzero().flatten().to(self.device) for layer in range(self.num_layers)]
        self.slots[key] = slot
        if self.compact and load is not None:
            self._build_compact(slot, load)
        return slot

    def remove(self, key: str) -> bool:
        """Forget the mask `key` and its compact matrices; its slot goes to the next mask added. False if unknown."""
        slot = self.slots.pop(key, None)
        if slot is None:
            return False
        self._drop_compact(slot)
        self._kept[slot] = None
        self.rows[:, slot] = 1
        self._free.append(slot)
        return True

    def compact_slots(self) -> list[int]:
        """The slots whose compact matrices are kept, least recently run first."""
        return list(self._compact_order)

    def _drop_compact(self, slot: int) -> None:
        self._compact_order.pop(slot, None)
        self._compact_cache.pop(slot, None)

    def _build_compact(self, slot: int, load: Callable) -> None:
        import torch

        while len(self._compact_order) >= self.compact_cache_masks:
            self._drop_compact(next(iter(self._compact_order)))
        per_layer = []
        with torch.no_grad():
            for layer in range(self.num_layers):
                idx = self._kept[slot][layer]  # [K]
                gate, up, down = load(layer)
                gu = torch.cat([gate.index_select(0, idx.to(gate.device)), up.index_select(0, idx.to(up.device))])
                dn = down.index_select(1, idx.to(down.device))
                per_layer.append((gu.to(self.device, self.dtype).contiguous(), dn.to(self.device, self.dtype).contiguous()))
        self._compact_cache[slot] = per_layer
        self._compact_order[slot] = None

    def set_batch(self, request_slots: Sequence[int], tokens_per_request: Sequence[int], any_lora: bool) -> None:
        """The slots of this step's requests, in batch order, and how many tokens each has: written in place into
        `token_slots` (tokens past them, e.g. padding, get slot 0)."""
        import numpy as np
        import torch

        counts = np.asarray(tokens_per_request, dtype=np.int64)
        slots = np.asarray(request_slots, dtype=np.int64)
        n = int(counts.sum())
        if n > self.token_slots.shape[0]:
            raise ConfigError(f"a step of {n} tokens is more than the mask table's {self.token_slots.shape[0]}")
        previous = self.batch.tokens
        distinct = set(slots.tolist())
        if len(distinct) <= 1:
            self.batch = BatchMasks(uniform=next(iter(distinct), 0), tokens=n, any_lora=any_lora)
            kind = "none" if self.batch.uniform == 0 else "compact" if self.compact_slot() else "uniform"
        else:
            self.batch = BatchMasks(uniform=None, tokens=n, any_lora=any_lora)
            kind = "mixed"
        self.passes[kind] += 1
        if n and (distinct != {0} or previous):
            per_token = torch.from_numpy(np.repeat(slots, counts))
            self.token_slots[:n].copy_(per_token, non_blocking=True)
        if previous > n:
            self.token_slots[n:previous].zero_()

    def clear(self) -> None:
        """After a pass: the next pass without `set_batch` (a dummy or warm-up pass) runs unmasked."""
        if self.batch.tokens:
            self.token_slots[: self.batch.tokens].zero_()
        self.batch = BatchMasks(uniform=0)

    def apply_static(self, layer: int, h):
        """h [T, I_local] (or [1, T, I_local], as vLLM's Transformers modeling backend runs) with each token's mask
        applied: a gather of its slot's row and a multiply, reading only the device buffers (what a compiled graph
        or a CUDA graph replays)."""
        flat = h.reshape(-1, h.shape[-1])  # [T, I]: the tokens in batch order, as `token_slots` holds them
        return (flat * self.rows[layer].index_select(0, self.token_slots[: flat.shape[0]])).view(h.shape)

    def apply(self, layer: int, h):
        """h [T, I_local] or [1, T, I_local] (the FFN activations entering the down projection) with each token's
        mask applied."""
        import torch

        if self.static or torch.compiler.is_compiling():
            return self.apply_static(layer, h)
        batch = self.batch
        if batch.uniform == 0:
            return h
        if batch.uniform is not None:
            return h * self.rows[layer, batch.uniform]  # [T, I] * [I]
        return self.apply_static(layer, h)

    def compact_slot(self) -> int | None:
        """The slot to run with compact matrices in this batch, or None (no mask, mixed masks, a LoRA, a static
        table, or a mask whose compact matrices were dropped)."""
        b = self.batch
        if not self.compact or b.uniform in (None, 0) or b.any_lora or b.uniform not in self._compact_cache:
            return None
        return b.uniform

    def compact_weights(self, layer: int, slot: int):
        """(gate_up [2K, H], down [H, K]) of the slot's kept neurons in `layer`, built when it was registered."""
        self._compact_order.move_to_end(slot)
        return self._compact_cache[slot][layer]
