"""LoRA ops for vLLM's CPU path, in place of its PyTorch punica ops (`vllm.lora.ops.torch_ops`).

vLLM's ops gather a copy of the adapter matrices for every token (`weights[indices]`), which is slow, and index
slot -1 as the last slot, so tokens of requests without a LoRA get whichever adapter sits there when a batch
mixes them with LoRA requests. These ops leave tokens without an adapter alone, as vLLM's GPU kernels do, and
pick one of two ways per forward pass from the token -> slot mapping:

- runs: when the batch holds few (or long) runs of consecutive tokens with one adapter (the usual case: a request's tokens
  are consecutive, and requests of one brick arrive together), one in-place `addmm_` per run, on views of the
  input and output rows: no copies and no more FLOPs than the LoRA needs;
- stacked: otherwise, one matmul against the active slots' matrices stacked, with each token's own block picked
  by a one-hot; its cost grows with the number of adapters in the batch times their rank, which is small
  against a real model's hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["bgmv_shrink", "bgmv_expand", "bgmv_expand_slice", "StepSelections", "CPU_LORA_OPS", "MAX_RUNS",
           "RUN_TOKENS"]

MAX_RUNS = 16  # more runs than this in a pass, and shorter than RUN_TOKENS on average: the stacked way
RUN_TOKENS = 32  # (the per-run calls would then cost more than the stacked matmul's extra FLOPs)


@dataclass(frozen=True)
class _Selection:
    """Which adapter slot each of a pass's n tokens uses.

    `lo..hi`: the slots in use (`hi < lo`: no token has an adapter). `runs`: (slot, start, end) for each run of
    consecutive tokens with one adapter, or None when there are more than MAX_RUNS of fewer than RUN_TOKENS
    tokens on average. `onehot` [n, hi - lo + 1]:
    1 where a token uses a slot, a row of zeros for a token without an adapter (built only when `runs` is None).
    `has_adapter` [n] bool, None when every token has one."""

    lo: int
    hi: int
    runs: tuple[tuple[int, int, int], ...] | None = None
    onehot: object = None
    has_adapter: object = None


_NONE = _Selection(lo=0, hi=-1, runs=())


class StepSelections:
    """Selections computed once per forward pass: every LoRA op of a pass gets the same token -> slot mapping (or,
    for the logits, request -> slot, which has another length unless every request has one token, when the two
    are equal), so a selection is keyed by its length. The worker patch clears it before and after every pass
    and turns it on; off, as in direct calls, every op computes its own."""

    enabled = False
    by_length: dict[int, _Selection] = {}
    ways = {"runs": 0, "stacked": 0}  # selections made by way (one per pass and mapping length)

    @classmethod
    def clear(cls) -> None:
        cls.by_length = {}


def _selection(indices, n: int) -> _Selection:
    if not StepSelections.enabled:
        return _compute_selection(indices, n)
    cached = StepSelections.by_length.get(n)
    if cached is None:
        cached = StepSelections.by_length[n] = _compute_selection(indices, n)
        if cached.hi >= cached.lo:
            StepSelections.ways["runs" if cached.runs is not None else "stacked"] += 1
    return cached


def _compute_selection(indices, n: int) -> _Selection:
    import torch

    if n == 0:
        return _NONE
    idx = indices[:n]
    lo, hi = int(idx.min()), int(idx.max())
    if hi < 0:
        return _NONE
    if lo == hi:
        return _Selection(lo=lo, hi=hi, runs=((lo, 0, n),))
    has = idx >= 0
    if lo < 0:
        lo = int(idx[has].min())
    has_adapter = None if bool(has.all()) else has
    starts = (idx[1:] != idx[:-1]).nonzero().flatten() + 1
    limit = max(MAX_RUNS, n // RUN_TOKENS)
    if len(starts) < limit * 2:  # runs without an adapter are dropped below
        bounds = [0, *starts.tolist(), n]
        slots = idx[bounds[:-1]].tolist()
        runs = tuple((s, a, b) for s, a, b in zip(slots, bounds[:-1], bounds[1:]) if s >= 0)
        if len(runs) <= limit:
            return _Selection(lo=lo, hi=hi, runs=runs, has_adapter=has_adapter)
    onehot = (idx[:, None] == torch.arange(lo, hi + 1, device=idx.device)[None, :]).to(torch.float32)
    return _Selection(lo=lo, hi=hi, onehot=onehot, has_adapter=has_adapter)


def _matrices(weights):
    """[max_loras, a, b] (vLLM stacks them as [max_loras, 1, a, b])."""
    return weights.squeeze(1) if weights.dim() == 4 else weights


def _shrink(x, a, output, sel: _Selection, scaling: float) -> None:
    """output[t, :r] = scaling * x[t] @ A[slot(t)].T, where a is [max_loras, r, in]."""
    r = a.shape[1]
    if sel.runs is not None:
        for slot, s, e in sel.runs:
            output[s:e, :r].addmm_(x[s:e], a[slot].t(), beta=0, alpha=scaling)
        return
    stacked = a[sel.lo : sel.hi + 1]  # [slots, r, in]
    slots = stacked.shape[0]
    xa = x @ stacked.reshape(slots * r, -1).t()  # [n, slots * r]
    y = scaling * (xa.view(-1, slots, r) * sel.onehot.to(x.dtype)[:, :, None]).sum(1)  # [n, r]: each token's block
    target = output[: x.shape[0], :r]
    if sel.has_adapter is None:
        target.copy_(y)
    else:
        import torch

        target.copy_(torch.where(sel.has_adapter[:, None], y, target))


def _expand(x, b, target, sel: _Selection, add: bool) -> None:
    """target[t] (+)= x[t] @ B[slot(t)].T for tokens with an adapter, where b is [max_loras, out, r] and target
    is [n, out] (a view of the output); tokens without one are left alone."""
    beta = 1 if add else 0
    if sel.runs is not None:
        for slot, s, e in sel.runs:
            target[s:e].addmm_(x[s:e], b[slot].t(), beta=beta)
        return
    stacked = b[sel.lo : sel.hi + 1]  # [slots, out, r]
    slots, out, r = stacked.shape
    z = (x[:, None, :] * sel.onehot.to(x.dtype)[:, :, None]).reshape(-1, slots * r)  # [n, slots * r], zeros off-block
    w = stacked.transpose(1, 2).reshape(slots * r, out)
    if add or sel.has_adapter is None:
        target.addmm_(z, w, beta=beta)
    else:
        import torch

        target.copy_(torch.where(sel.has_adapter[:, None], z @ w, target))


def bgmv_shrink(inputs, weights, output, indices, scaling: float = 1.0):
    """output[t, :r] = scaling * inputs[t] @ A[slot(t)].T; tokens without an adapter are left alone."""
    n = min(inputs.shape[0], output.shape[0])
    sel = _selection(indices, n)
    if sel.hi >= sel.lo:
        _shrink(inputs[:n].to(output.dtype), _matrices(weights).to(output.dtype), output, sel, scaling)


def bgmv_expand(inputs, weights, output, indices, add_inputs: bool = True):
    """output[t, :out] (+)= inputs[t] @ B[slot(t)].T; tokens without an adapter are left alone."""
    n = min(inputs.shape[0], output.shape[0])
    sel = _selection(indices, n)
    if sel.hi >= sel.lo:
        b = _matrices(weights).to(output.dtype)
        c = min(b.shape[1], output.shape[1])  # adapter and model may pad differently
        _expand(inputs[:n].to(output.dtype), b[:, :c], output[:n, :c], sel, add_inputs)


def bgmv_expand_slice(inputs, weights, output, indices, slice_offset: int, slice_size: int, add_inputs: bool = True):
    """output[t, offset:offset + size] (+)= inputs[t] @ B[slot(t)].T; tokens without an adapter are left alone."""
    n = min(inputs.shape[0], output.shape[0])
    sel = _selection(indices, n)
    if sel.hi >= sel.lo:
        target = output[:n, slice_offset : slice_offset + slice_size]
        _expand(inputs[:n].to(output.dtype), _matrices(weights).to(output.dtype), target, sel, add_inputs)


CPU_LORA_OPS = {"bgmv_shrink": bgmv_shrink, "bgmv_expand": bgmv_expand, "bgmv_expand_slice": bgmv_expand_slice}
