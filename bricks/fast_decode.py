"""Decode not bound by Python and kernel launches: a static KV cache, and the one-token step compiled.

transformers' own route: `generate(..., cache_implementation="static", compile_config=CompileConfig(...))`
allocates the KV cache once at a fixed shape [B, kv_heads, max_len, head_dim] per layer, runs the prefill eager
and the decode steps through `torch.compile`; mode "reduce-overhead" replays them as CUDA graphs, one kernel
launch per step instead of one per op. A graph is compiled per shape: batch 1, then one for every other batch
size, and again per set of FFN matrix shapes (the dense model, each compact mask shape in use); CUDA graphs are
recorded per batch size and re-recorded when a weight's address changes. Keep compact matrices in a
`bricks.emergent.compact_cache.CompactCache`, so a mask that comes back reuses the same tensors, and its graphs.

    kwargs = decode_kwargs(model, FastDecode())   # {} on a CPU ("auto"); call it where the batch will run
    model.generate(input_ids, ..., **kwargs)

Never compiled, even when asked: a model with a forward hook or pre-hook on any module (`apply_masks`, row
masks, profiling). torch.compile does not guard on hooks added or removed after it compiled
(`torch._dynamo.config.skip_nnmodule_hook_guards`), so a compiled step would silently run without them, or
keep stale ones. Such a call gets the static cache without compilation, or nothing where transformers cannot
turn its automatic compilation off. Swapped modules and `forward` attributes (compact FFN, one-pass LoRA) are
guarded: the step recompiles where their shapes or code differ (tests/unit/test_fast_decode.py).

Imports only torch and transformers (the GPU benchmark loads it without brickwork's other dependencies).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bricks.errors import ConfigError

__all__ = ["FastDecode", "decode_kwargs", "fast_decode_active", "hooked_modules"]

_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class FastDecode:
    """How `generate` decodes.

    enabled: the static KV cache; "auto" turns it on for a CUDA model only (on a CPU the static cache alone
        measured 0.85-1.0x the eager path on the toy world, batch 1-128: tests/benchmarks/bench_decode_cpu.py).
        compile: compile the decode step; "auto" on CUDA only (on a CPU, True needs a C++ compiler and tens of
        seconds per graph). backend, mode, fullgraph, dynamic: `torch.compile`'s. recompile_limit:
        graphs one compiled step may hold (batch sizes x mask shapes) before torch falls back to eager for
        new shapes (raised to this value, never lowered).
    """

    enabled: bool | str = "auto"
    compile: bool | str = "auto"
    backend: str = "inductor"
    mode: str | None = "reduce-overhead"
    fullgraph: bool = False
    dynamic: bool | None = None
    recompile_limit: int = 64

    def __post_init__(self) -> None:
        for name in ("enabled", "compile"):
            value = getattr(self, name)
            if not (value == "auto" or value is True or value is False):  # 1.0 == True, but is not a switch
                raise ConfigError(f"FastDecode.{name} must be 'auto', True or False, got {value!r}")
        if self.mode not in _MODES:
            raise ConfigError(f"FastDecode.mode {self.mode!r} is not a torch.compile mode; expected one of {_MODES}")
        if not isinstance(self.backend, str) or not self.backend:
            raise ConfigError(f"FastDecode.backend must name a torch.compile backend, got {self.backend!r}")
        if not isinstance(self.recompile_limit, int) or self.recompile_limit < 1:
            raise ConfigError(f"FastDecode.recompile_limit must be a positive int, got {self.recompile_limit!r}")


def _on(switch: bool | str, device) -> bool:
    return device.type == "cuda" if switch == "auto" else bool(switch)


def _device(model):
    from bricks.device import model_device

    return model_device(model)


def fast_decode_active(model, config: FastDecode | None = None) -> tuple[bool, bool]:
    """(static cache, compiled step) as `config` resolves for `model`'s device, before the hook check."""
    cfg = config or FastDecode()
    device = _device(model)
    static = _on(cfg.enabled, device)
    return static, static and _on(cfg.compile, device)


def hooked_modules(model) -> list[str]:
    """Names of the modules of `model` with a forward hook or pre-hook (global hooks count as the root's)."""
    from torch.nn.modules import module as nn_module

    names = [name or "<root>" for name, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    if getattr(nn_module, "_global_forward_hooks", None) or getattr(nn_module, "_global_forward_pre_hooks", None):
        names.insert(0, "<global>")
    return names


def _generation_knows(name: str) -> bool:
    from transformers import GenerationConfig

    return hasattr(GenerationConfig(), name)


def _raise_recompile_limit(limit: int) -> None:
    import torch._dynamo

    for key in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
        if hasattr(torch._dynamo.config, key) and getattr(torch._dynamo.config, key) < limit:
            setattr(torch._dynamo.config, key, limit)


def decode_kwargs(model, config: FastDecode | None = None) -> dict[str, Any]:
    """The extra `generate` kwargs for `config` on `model`, as the model is now (call it inside the context the
    batch runs in: a hook added later is not seen). {} when the fast path is off."""
    cfg = config or FastDecode()
    static, compiled = fast_decode_active(model, cfg)
    if not static:
        return {}
    kwargs: dict[str, Any] = {"cache_implementation": "static"}
    if compiled and not hooked_modules(model):
        try:
            from transformers import CompileConfig
        except ImportError:  # a transformers without generate-time compilation: the static cache alone
            return kwargs
        compile_config = CompileConfig(fullgraph=cfg.fullgraph, dynamic=cfg.dynamic, backend=cfg.backend,
                                       mode=cfg.mode)
        if _device(model).type != "cuda":
            compile_config._compile_all_devices = True  # transformers compiles on accelerators only, unless told
        _raise_recompile_limit(cfg.recompile_limit)
        kwargs["compile_config"] = compile_config
    elif _generation_knows("disable_compile"):
        kwargs["disable_compile"] = True  # transformers would otherwise compile a static-cache step on a GPU
    else:
        return {}  # cannot keep transformers from compiling: no static cache either
    return kwargs
