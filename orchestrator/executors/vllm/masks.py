"""Per-token FFN neuron masks for a batch that mixes requests with different masks (pure torch, no vLLM).

vLLM carries a token -> LoRA-slot index so that one batch serves many adapters; `MaskTable` carries a token ->
mask-slot index the same way. Slot 0 is "no mask" (every neuron runs). For each decoder layer the table holds one
row per slot, [slots, I_local], and a layer's FFN activations [T, I_local] are multiplied by the rows of their
tokens' slots. A batch whose tokens all share one slot is multiplied by that row alone, or, when no LoRA runs
in it, computed with compact matrices (the kept rows of gate/up and columns of down), so FLOPs really drop.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bricks.errors import ConfigError

__all__ = ["MaskTable", "BatchMasks", "pack_mask", "unpack_mask"]


def pack_mask(kept: Mapping[int, "object"], num_layers: int, intermediate_size: int) -> tuple[bytes, int, int]:
    """{layer: bool [I]} of the neurons that run (unlisted layers run dense) -> packed bits of a [L, I] matrix."""
    import numpy as np

    dense = np.ones((num_layers, intermediate_size), dtype=bool)
    for layer, m in kept.items():
        dense[layer] = m.cpu().numpy().astype(bool)
    return np.packbits(dense).tobytes(), num_layers, intermediate_size


def unpack_mask(packed: bytes, num_layers: int, intermediate_size: int):
    """The bool [L, I] tensor that `pack_mask` packed."""
    import numpy as np
    import torch

    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=num_layers * intermediate_size)
    return torch.from_numpy(bits.reshape(num_layers, intermediate_size).astype(bool))


@dataclass(frozen=True)
class BatchMasks:
    """The masks of one forward pass: no mask, one slot for every token, or a slot per token."""

    uniform: int | None  # the slot every token uses (0: none), or None when tokens differ
    token_slots: "object | None" = None  # long [T] when tokens differ
    any_lora: bool = False  # some token runs a LoRA adapter (compact matrices would bypass it)


class MaskTable:
    """Mask rows per layer and slot on one worker; `shard` selects this tensor-parallel rank's neurons.

    A removed mask's slot is reused by the next one added. Compact matrices are kept for at most
    `compact_cache_masks` masks (the least recently run ones are dropped): each holds a fraction of the FFN
    weights, which for a real model is gigabytes."""

    def __init__(self, num_layers: int, intermediate_size: int, *, dtype, device, shard: slice | None = None,
                 compact: bool = True, compact_cache_masks: int = 8) -> None:
        import torch

        if compact_cache_masks < 1:
            raise ConfigError(f"compact_cache_masks must be at least 1, got {compact_cache_masks}")
        self.num_layers, self.intermediate_size = num_layers, intermediate_size
        self.shard = shard or slice(0, intermediate_size)
        self.dtype, self.device, self.compact = dtype, device, compact
        width = self.shard.stop - self.shard.start
        self.rows = [torch.ones((1, width), dtype=dtype, device=device) for _ in range(num_layers)]  # [S, I_local]
        self.slots: dict[str, int] = {}
        self._kept: list = [None]  # per slot (slot 0: none): long indices of kept local neurons per layer
        self._compact_cache: dict[tuple[int, int], tuple] = {}
        self._compact_order: OrderedDict[int, None] = OrderedDict()  # slots with compact matrices, oldest first
        self.compact_cache_masks = compact_cache_masks
        self._free: list[int] = []  # slots of removed masks
        self.batch = BatchMasks(uniform=0)
        self.passes = {"none": 0, "uniform": 0, "compact": 0, "mixed": 0}  # forward passes by how masks ran

    def add(self, key: str, dense) -> int:
        """Register a bool [L, I] mask under `key` (idempotent); returns its slot."""
        import torch

        if key in self.slots:
            return self.slots[key]
        if tuple(dense.shape) != (self.num_layers, self.intermediate_size):
            raise ConfigError(f"mask {key!r} has shape {list(dense.shape)}, expected "
                             f"[{self.num_layers}, {self.intermediate_size}] (layers x FFN neurons)")
        local = dense[:, self.shard]
        kept = [local[layer].nonzero().flatten().to(self.device) for layer in range(self.num_layers)]
        if self._free:
            slot = self._free.pop()
            for layer in range(self.num_layers):
                self.rows[layer][slot] = local[layer].to(device=self.device, dtype=self.dtype)
            self._kept[slot] = kept
        else:
            slot = len(self._kept)
            for layer in range(self.num_layers):
                row = local[layer].to(device=self.device, dtype=self.dtype).unsqueeze(0)
                self.rows[layer] = torch.cat([self.rows[layer], row])
            self._kept.append(kept)
        self.slots[key] = slot
        return slot

    def remove(self, key: str) -> bool:
        """Forget the mask `key` and its compact matrices; its slot goes to the next mask added. False if unknown."""
        slot = self.slots.pop(key, None)
        if slot is None:
            return False
        self._drop_compact(slot)
        self._kept[slot] = None
        for layer in range(self.num_layers):
            self.rows[layer][slot] = 1
        self._free.append(slot)
        return True

    def compact_slots(self) -> list[int]:
        """The slots whose compact matrices are kept, least recently run first."""
        return list(self._compact_order)

    def _drop_compact(self, slot: int) -> None:
        self._compact_order.pop(slot, None)
        for layer in range(self.num_layers):
            self._compact_cache.pop((layer, slot), None)

    def set_batch(self, request_slots: Sequence[int], tokens_per_request: Sequence[int], any_lora: bool) -> None:
        """The slots of this step's requests, in batch order, and how many tokens each has in the batch."""
        import torch

        distinct = set(request_slots)
        if len(distinct) <= 1:
            self.batch = BatchMasks(uniform=next(iter(distinct), 0), any_lora=any_lora)
            kind = "none" if self.batch.uniform == 0 else "compact" if self.compact_slot() else "uniform"
            self.passes[kind] += 1
            return
        self.passes["mixed"] += 1
        per_token = torch.repeat_interleave(torch.tensor(list(request_slots), dtype=torch.long),
                                            torch.tensor(list(tokens_per_request), dtype=torch.long))
        self.batch = BatchMasks(uniform=None, token_slots=per_token.to(self.device), any_lora=any_lora)

    def clear(self) -> None:
        self.batch = BatchMasks(uniform=0)

    def apply(self, layer: int, h):
        """h [T, I_local] (the FFN activations entering down_proj) with each token's mask applied."""
        batch = self.batch
        if batch.uniform == 0:
            return h
        if batch.uniform is not None:
            return h * self.rows[layer][batch.uniform]  # [T, I] * [I]
        slots = batch.token_slots
        if slots.shape[0] != h.shape[0]:  # padded batch: padding tokens run unmasked
            import torch

            pad = torch.zeros(h.shape[0], dtype=slots.dtype, device=slots.device)
            n = min(h.shape[0], slots.shape[0])
            pad[:n] = slots[:n]
            slots = pad
        return h * self.rows[layer].index_select(0, slots)  # [T, I] * [T, I]

    def compact_slot(self) -> int | None:
        """The slot to run with compact matrices in this batch, or None (no mask, mixed masks, or a LoRA)."""
        b = self.batch
        if not self.compact or b.uniform in (None, 0) or b.any_lora:
            return None
        return b.uniform

    def compact_weights(self, layer: int, slot: int, load):
        """(gate_up [2K, H], down [H, K]) of the slot's kept neurons, built once per (layer, slot).

        `load(layer)` gives this rank's (gate [I_local, H], up [I_local, H], down [H, I_local]) weights.
        """
        import torch

        key = (layer, slot)
        if slot in self._compact_order:
            self._compact_order.move_to_end(slot)
        else:
            while len(self._compact_order) >= self.compact_cache_masks:
                self._drop_compact(next(iter(self._compact_order)))
            self._compact_order[slot] = None
        if key not in self._compact_cache:
            idx = self._kept[slot][layer]  # [K]
            with torch.no_grad():
                gate, up, down = load(layer)
                gu = torch.cat([gate.index_select(0, idx.to(gate.device)), up.index_select(0, idx.to(up.device))])
                self._compact_cache[key] = (gu.to(self.device, self.dtype).contiguous(),
                                            down.index_select(1, idx.to(down.device)).to(self.device, self.dtype)
                                            .contiguous())
        return self._compact_cache[key]
