"""One forward pass for a batch whose rows use different LoRA adapters (the S-LoRA / Punica idea in plain torch).

PEFT runs a mixed batch (`adapter_names=`) as a loop over adapters, each on its sub-batch. Here every LoRA
layer holds its adapters stacked, and each row gathers its own A and B:

    A: [S, r, in]   B: [S, out, r] (scaling folded in)      slot 0 is the zero adapter (the base model)
    slots: [N]      the adapter slot of each row

and computes the adapters' part of every row in one of two ways (`mode`):

    "stacked":  h = x @ A_all^T  [N, T, S*r],  h *= onehot(slots)  [N, 1, S*r],  y += h @ B_all^T  [N, T, out]
                two matmuls whatever the mix; their inner size S*r costs little while S*r is small beside `in`
    "gather":   y += bmm(bmm(x, A[slots]^T), B[slots]^T)  (each row gathers its own A and B once per batch)

"auto" takes "stacked" while S*r is at most a quarter of the layer's input size (or 256), else "gather".
Ranks are padded with zeros to the largest one, which changes no result. The adapters stay in PEFT's model
(loaded and merged as usual); `MultiLora.pass_for(rows)` only swaps each LoRA layer's forward for the block.

    multi = MultiLora.from_peft(peft_model, ["b_caesar_1", "m_1f2e..."])   # stacks built once, reused
    with multi.pass_for(["b_caesar_1", None, "m_1f2e..."]):               # one adapter (or None) per row
        model.generate(...)

Imports only torch: the GPU benchmark loads this file on a machine without the rest of brickwork's packages.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["MultiLora", "UnsupportedMixedLoraError", "mixed_lora_pass", "row_subset", "MODES"]

MODES = ("auto", "stacked", "gather")

try:
    from bricks.errors import BrickworkError as _Base
except ImportError:  # loaded by path on a machine without brickwork's dependencies (the GPU benchmark)
    _Base = Exception


class UnsupportedMixedLoraError(_Base):
    """The adapters use something the one-pass path does not do (DoRA or another variant, a LoRA bias, a merged
    adapter, a LoRA on a layer that is not Linear); the message lists every such thing."""


@dataclass(frozen=True)
class _Stack:
    a: object  # [S, r, in] torch.Tensor
    b: object  # [S, out, r], each slot's scaling folded in

    def stacked(self, auto: bool) -> bool:
        slots, rank, fan_in = self.a.shape
        return not auto or slots * rank <= max(256, fan_in // 4)


def _lora_layers(model) -> list[tuple[str, object]]:
    return [(name, m) for name, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]


def _problems(name: str, layer, adapters: Sequence[str]) -> list[str]:
    import torch.nn as nn

    out = []
    used = [a for a in adapters if a in layer.lora_A]
    if not used:
        return out
    if getattr(layer, "merged", False):
        out.append(f"{name}: adapters merged into the weights")
    if not isinstance(layer.lora_A[used[0]], nn.Linear):
        out.append(f"{name}: LoRA on a {type(layer.base_layer).__name__}")
    for a in used:
        if a in getattr(layer, "lora_variant", {}) or getattr(layer, "use_dora", {}).get(a):
            out.append(f"{name}: adapter {a} uses a LoRA variant (DoRA, ...)")
        if getattr(layer, "lora_bias", {}).get(a):
            out.append(f"{name}: adapter {a} has a LoRA bias")
    return out


def _stack(layer, adapters: Sequence[str]) -> _Stack:
    import torch

    used = [a for a in adapters if a in layer.lora_A]
    ref = layer.lora_A[used[0]].weight
    rank = max(layer.lora_A[a].weight.shape[0] for a in used)
    fan_in = ref.shape[1]
    fan_out = layer.lora_B[used[0]].weight.shape[0]
    a = torch.zeros(len(adapters) + 1, rank, fan_in, dtype=ref.dtype, device=ref.device)  # [S, r, in]
    b = torch.zeros(len(adapters) + 1, fan_out, rank, dtype=ref.dtype, device=ref.device)  # [S, out, r]
    with torch.no_grad():
        for slot, name in enumerate(adapters, start=1):
            if name not in layer.lora_A:
                continue  # this adapter leaves the layer alone: a zero slot
            wa, wb = layer.lora_A[name].weight, layer.lora_B[name].weight  # [r_i, in], [out, r_i]
            a[slot, : wa.shape[0]] = wa
            b[slot, :, : wb.shape[1]] = wb * layer.scaling[name]
    return _Stack(a, b)


class MultiLora:
    """The stacked adapters of a PEFT model's LoRA layers, for one-pass mixed batches (module docstring)."""

    def __init__(self, layers: list[tuple[object, _Stack]], adapters: tuple[str, ...], mode: str = "auto") -> None:
        if mode not in MODES:
            raise UnsupportedMixedLoraError(f"unknown one-pass LoRA mode {mode!r}; expected one of {', '.join(MODES)}")
        self.mode = mode
        self.layers = layers
        self.adapters = adapters
        self._slot = {name: i for i, name in enumerate(adapters, start=1)}

    @classmethod
    def from_peft(cls, model, adapters: Sequence[str], mode: str = "auto") -> MultiLora:
        """Stack `adapters` (PEFT adapter names loaded in `model`); UnsupportedMixedLoraError lists what cannot."""
        adapters = tuple(dict.fromkeys(adapters))
        found = _lora_layers(model)
        problems = [p for name, layer in found for p in _problems(name, layer, adapters)]
        missing = [a for a in adapters if not any(a in layer.lora_A for _, layer in found)]
        problems += [f"adapter {a} is not loaded" for a in missing]
        if problems:
            shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
            raise UnsupportedMixedLoraError(f"one-pass mixed LoRA cannot run: {shown}")
        layers = [(layer, _stack(layer, adapters)) for _, layer in found if any(a in layer.lora_A for a in adapters)]
        return cls(layers, adapters, mode)

    @property
    def nbytes(self) -> int:
        """Bytes of the stacked weights (a copy of the adapters' weights, padded to the largest rank)."""
        return sum(s.a.numel() * s.a.element_size() + s.b.numel() * s.b.element_size() for _, s in self.layers)

    def slots(self, rows: Sequence[str | None]) -> list[int]:
        """Each row's slot: 0 for None (the base model), else its adapter's."""
        try:
            return [0 if r is None else self._slot[r] for r in rows]
        except KeyError as e:
            raise UnsupportedMixedLoraError(f"adapter {e.args[0]} is not in this stack "
                                            f"(stacked: {', '.join(self.adapters)})") from None

    @contextlib.contextmanager
    def pass_for(self, rows: Sequence[str | None]) -> Iterator[None]:
        """Within the block, row i of every batch runs with adapter `rows[i]` (None: no adapter)."""
        import torch

        if not self.layers:
            yield
            return
        device = self.layers[0][1].a.device
        slots = torch.tensor(self.slots(rows), dtype=torch.long, device=device)  # [N]
        saved = []
        try:
            for layer, stack in self.layers:
                saved.append((layer, layer.__dict__.get("forward")))
                stacked = self.mode == "stacked" or (self.mode == "auto" and stack.stacked(auto=True))
                layer.forward = (_stacked_forward if stacked else _gather_forward)(layer, stack, slots)
            yield
        finally:
            for layer, original in saved:
                if original is None:
                    del layer.forward
                else:
                    layer.forward = original


def _live_rows(slots):
    """The rows that have an adapter [K], or None when all of them do (no row needs to be left out)."""
    live = (slots > 0).nonzero().flatten()
    return None if live.numel() == slots.numel() else live


def _stacked_forward(layer, stack: _Stack, slots):
    import torch

    s, r, fan_in = stack.a.shape
    a_all = stack.a.reshape(s * r, fan_in).t()  # [in, S*r]
    b_all = stack.b.permute(0, 2, 1).reshape(s * r, -1)  # [S*r, out]
    n, live = slots.shape[0], _live_rows(slots)
    kept = slots if live is None else slots[live]  # [K]: the rows that compute an adapter's part
    onehot = torch.zeros(kept.shape[0], s, r, dtype=a_all.dtype, device=a_all.device)
    onehot[torch.arange(kept.shape[0], device=kept.device), kept] = 1
    onehot = onehot.reshape(kept.shape[0], 1, s * r)  # [K, 1, S*r]: each row's own slot

    def delta(h):  # [K, T, in] -> [K, T, out]
        return ((h.to(a_all.dtype) @ a_all) * onehot) @ b_all

    return _forward(layer, n, live, delta)


def _gather_forward(layer, stack: _Stack, slots):
    import torch

    n, live = slots.shape[0], _live_rows(slots)
    kept = slots if live is None else slots[live]
    a_t, b_t = stack.a[kept].transpose(1, 2), stack.b[kept].transpose(1, 2)  # [K, in, r], [K, r, out]: once a batch

    def delta(h):  # [K, T, in] -> [K, T, out]
        return torch.bmm(torch.bmm(h.to(a_t.dtype), a_t), b_t)

    return _forward(layer, n, live, delta)


_subset = threading.local()  # .rows: the batch rows [M] that calls see inside `row_subset`, .at: their positions


@contextlib.contextmanager
def row_subset(rows, memo: dict | None = None) -> Iterator[None]:
    """Within the block (this thread), a LoRA layer called with `len(rows)` rows gets rows `rows` of its pass's
    batch ([M] increasing batch row numbers, on the layers' device): the part of a batch that runs apart from
    the rest (bricks.emergent.row_masks: the rows whose FFN is not compacted). Every row with an adapter must be
    in `rows`. `memo`: a dict kept by the caller while `rows` stays the same, where the layers keep their rows'
    positions from one call to the next."""
    saved = getattr(_subset, "rows", None), getattr(_subset, "at", None)
    _subset.rows, _subset.at = rows, memo if memo is not None else {}
    try:
        yield
    finally:
        _subset.rows, _subset.at = saved


def _positions(m: int, n: int, live):
    """Where the rows with an adapter (`live` [K] of a batch of n) are in the active `row_subset` of m rows."""
    import torch

    rows = getattr(_subset, "rows", None)
    if rows is None or rows.numel() != m or live is None:
        raise UnsupportedMixedLoraError(f"a batch of {m} rows, but adapters were given for {n}")
    at = _subset.at.get(id(live))
    if at is None:
        at = torch.searchsorted(rows, live)  # [K]
        if bool((at >= m).any()) or not bool((rows[at.clamp(max=m - 1)] == live).all()):
            raise UnsupportedMixedLoraError(f"a part of {m} rows of a batch of {n} leaves out rows with an adapter")
        _subset.at[id(live)] = at
    return at


def _forward(layer, n: int, live, delta):
    """base(x) plus `delta` of the rows that have an adapter (all rows when `live` is None); inside a
    `row_subset`, x may hold only those rows of the batch."""

    def forward(x, *args, **kwargs):
        result = layer.base_layer(x, *args, **kwargs)  # [N, T, out] (or [M, T, out], a row_subset)
        m = x.shape[0]
        at = live if m == n else _positions(m, n, live)
        h = x.reshape(m, -1, x.shape[-1])  # [M, T, in]
        if at is None:
            return result + delta(h).reshape(result.shape).to(result.dtype)
        if at.numel() == 0:
            return result
        out = result.reshape(m, -1, result.shape[-1])
        return out.index_add(0, at, delta(h[at]).to(result.dtype)).reshape(result.shape)

    return forward


def mixed_lora_pass(model, rows: Sequence[str | None], mode: str = "auto"):
    """Shorthand: stack the adapters named in `rows` and run the block with them (see MultiLora)."""
    return MultiLora.from_peft(model, [r for r in rows if r is not None], mode).pass_for(rows)
