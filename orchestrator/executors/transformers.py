"""The transformers executor: any HF causal LM, LoRA bricks through PEFT, loaded once and switched per group."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bricks.generation import PromptIds, generate_texts
from bricks.lora.base_only import BaseOnly
from bricks.lora.merge_cache import MergeCache, MergeStats
from bricks.lora.multi import UnsupportedMixedLoraError
from bricks.model_io import load_model, load_tokenizer
from bricks.prefix_cache import PrefixCache
from bricks.prefix_share import PrefixStats
from orchestrator.executors.base import (
    GenerationRequest,
    UnsupportedConfigError,
    config_masks,
    context_length,
    context_problems,
    group_requests,
    reason,
)
from orchestrator.plan import BrickConfig, Decoding

__all__ = ["TransformersExecutor", "MergeStats"]

log = logging.getLogger(__name__)

DeltaCallback = Callable[[int, str], None]


def _by_decoding(requests: Sequence[GenerationRequest]) -> dict[Decoding, list[list[int]]]:
    """Request indices grouped by brick configuration, the groups gathered by decoding (first-seen order)."""
    out: dict[Decoding, list[list[int]]] = {}
    for (_, decoding), idx in group_requests(requests).items():
        out.setdefault(decoding, []).append(idx)
    return out


def _local(idx: list[int], cancelled: Callable[[int], bool] | None) -> Callable[[int], bool] | None:
    """`cancelled` for the requests `idx` (a batch's rows are positions in `idx`)."""
    return None if cancelled is None else (lambda k: cancelled(idx[k]))


def _one_pass_kinds(config: BrickConfig) -> bool:
    """Whether a configuration can share a one-pass batch: LoRA adapters and FFN-neuron masks only."""
    from bricks.kinds import get_kind

    return all(b.role == "adapter" or get_kind(b.kind).restricts == "neurons" for b in config.bricks)


def _adapter_name(key: str) -> str:
    return "b_" + re.sub(r"[^A-Za-z0-9_]", "_", key)  # PEFT adapter names become module keys: no dots


def _merged_name(lora_key: str) -> str:
    """The PEFT adapter name of a merged adapter: a digest, so two merge keys never share a name."""
    return "m_" + hashlib.sha256(lora_key.encode("utf-8")).hexdigest()[:24]


class TransformersExecutor:
    """Runs requests on a transformers model: the requests of a call that share a decoding run as one batch (one
    pass over stacked adapters and per-row masks when they use several brick configurations of fewer than
    `mixed_group_rows` requests each on average; `mixed_batches=False` runs one batch per configuration). A
    mask-only configuration alone runs as compact FFN matrices (built once per mask, kept in a cache of at most
    `compact_cache_bytes`); so do, in a one-pass batch's prompts, the rows of a mask-only configuration that two
    rows or more share (`bricks.emergent.row_masks`). `fast_decode` (bricks.fast_decode.FastDecode) adds a
    static KV cache and a compiled decode step, on a GPU by default. With `share_prefixes`, rows of a batch with
    the same configuration whose prompts start alike compute that start once (`bricks.prefix_share`; dynamic KV
    cache only), and those shared starts, and a lone prompt's first whole blocks, are kept across calls in a
    store of at most `prefix_cache_bytes` (`bricks.prefix_cache`; 0: off; cleared when adapters change). With
    `lean_decode`, batches run a loop whose finished rows leave the batch and whose KV cache grows in place
    (`bricks.lean_decode`: greedy, the same tokens as `generate`, which runs whatever it cannot).

    LoRA bricks are loaded into one PeftModel on first use and kept; several bricks in one step are combined
    with PEFT's `add_weighted_adapter` (cat, svd, linear, ties, dare_linear, dare_ties, ...), and the combined
    adapter is cached by (bricks, weights, method, density): a merge is computed once while it stays in the cache,
    which holds at most `merge_cache_size` merged adapters and `merge_cache_bytes` of their weights (None: no
    byte bound); the least recently used one is deleted from the model beyond that (`merge_stats`: merges, hits,
    misses, evictions, size, bytes).
    """

    name = "transformers"
    cancellable = True  # generate takes `cancelled`: rows whose caller went away stop at their next token

    def __init__(self, model_dir: Path, library, *, dtype: str = "auto", batch_size: int = 256,
                 trust_remote_code: bool = False, merge_seed: int = 0, compact: bool = True,
                 merge_cache_size: int = 16, merge_cache_bytes: int | None = None, device: str | None = "auto",
                 device_map: str | dict | None = None, mixed_batches: bool = True, mixed_group_rows: int = 32,
                 fast_decode=None, share_prefixes: bool = True, lean_decode: bool = True,
                 compact_cache_bytes: int = 4 * 2**30, prefix_cache_bytes: int = 256 * 2**20) -> None:
        from bricks.device import resolve_device
        from bricks.emergent.compact_cache import CompactCache
        from bricks.fast_decode import FastDecode

        self.model_dir = Path(model_dir)
        self.library = library
        self.batch_size = batch_size
        self.device = resolve_device(device)  # "cuda" without a GPU fails here, in one line, before any load
        self.tokenizer = load_tokenizer(self.model_dir)
        self.model = load_model(self.model_dir, dtype=dtype, trust_remote_code=trust_remote_code, device=self.device,
                                device_map=device_map)
        self._loaded: set[str] = set()
        self.merge_seed = merge_seed
        self.compact = compact  # emergent bricks without LoRA run as smaller FFN matrices (fewer FLOPs)
        self._mask_cache: dict[str, dict] = {}
        self._fits: set[str] = set()  # brick keys checked against the model
        self._merges: MergeCache[str, str] = MergeCache(merge_cache_size, merge_cache_bytes, self._drop_merged)
        self.merge_stats: MergeStats = self._merges.stats
        self._lock = threading.Lock()
        self.mixed_batches = mixed_batches  # several configurations with the same decoding: one pass, not a loop
        self.mixed_group_rows = mixed_group_rows  # ... when they average fewer requests than this each
        self._stacked = None  # bricks.lora.multi.MultiLora over the loaded adapters
        self.one_pass_stats = {"batches": 0, "configs": 0, "fallbacks": 0}
        self.fast_decode = fast_decode or FastDecode()  # static KV cache + compiled decode: on a GPU by default
        self.compact_cache = CompactCache(compact_cache_bytes)  # compact FFN matrices, built once per mask
        self._base_switch = BaseOnly()  # LoRA layers off, found once per set of loaded adapters
        self.share_prefixes = share_prefixes  # rows of a batch that start alike compute that start once
        self.prefix_stats = PrefixStats()
        # shared prefixes and lone prompts' beginnings, kept across calls (0: off); cleared when adapters change
        self.prefix_cache = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes else None
        self.lean_decode = lean_decode  # batches whose finished rows leave (bricks.lean_decode)
        self._prompt_ids = PromptIds(self.tokenizer)  # checked against the context, then generated: tokenized once

    @property
    def model_config(self):
        return self.model.config

    def prompt_problems(self, requests: Sequence[GenerationRequest]) -> list[str | None]:
        """Why each request's prompt does not fit the model's context, or None (see `context_problems`)."""
        return context_problems(self.tokenizer, context_length(self.model.config), requests, self._prompt_ids)

    # -- adapters ---------------------------------------------------------------------------------------
    def _brick_folder(self, brick_id: str, version: int) -> Path:
        from bricks.integrity import check_brick
        from bricks.lora import LoraBrick

        brick = self.library.get(brick_id, version)
        check_brick(brick)  # checksums, safetensors header, no symlinks: a bad file fails here, named, not as garbage
        LoraBrick.from_dir(brick.path, brick.manifest).check_fits(self.model.config)
        return brick.path

    def _ensure_adapter(self, key: str, brick_id: str, version: int) -> str:
        from peft import PeftModel

        name = _adapter_name(key)
        if name in self._loaded:
            return name
        folder = self._brick_folder(brick_id, version)
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name, is_trainable=False)
        self.model.eval()
        self._loaded.add(name)
        self._forget_prefixes()
        log.info("loaded LoRA brick %s from %s", key, folder)
        return name

    def _activate(self, config: BrickConfig) -> str | None:
        """Make `config`'s LoRA part the active adapter; None means run the base model."""
        target = self._adapter(config)
        if target is not None:
            self.model.set_adapter(target)
        return target

    def _adapter(self, config: BrickConfig) -> str | None:
        """The PEFT adapter of `config`'s LoRA part (loaded, or merged, on first use); None for the base model."""
        loras = config.loras
        if not loras:
            return None
        names = [self._ensure_adapter(b.key, b.id, b.version) for b in loras]
        if len(names) == 1 and config.merge == "single":
            target = names[0]
        else:
            target = self._merges.get(config.lora_key)
            if target is None:
                target = _merged_name(config.lora_key)
                nbytes = self._merge(names, [b.weight for b in loras], target, config)
                self._merges.put(config.lora_key, target, nbytes)  # may delete least recently used merges
        return target

    def _merge(self, names: list[str], weights: list[float], target: str, config: BrickConfig) -> int:
        """Add the merged adapter `target` to the model; returns the bytes of its weights."""
        import torch
        from peft.utils import get_peft_model_state_dict

        t = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.merge_seed)  # DARE drops parameters at random: the same merge every time
            self.model.add_weighted_adapter(names, weights, target, combination_type=config.merge,
                                            density=config.density)
        self._loaded.add(target)
        ms = (time.perf_counter() - t) * 1000
        self.merge_stats.merges += 1
        self.merge_stats.merge_ms += ms
        log.info("merged %s in %.1f ms", config.lora_key, ms)
        weights = get_peft_model_state_dict(self.model, adapter_name=target)
        return sum(v.numel() * v.element_size() for v in weights.values())

    def _drop_merged(self, lora_key: str, name: str) -> None:
        """Delete an evicted merged adapter from the model (the merge cache's `on_evict`)."""
        self._loaded.discard(name)
        if self.model is not None and name in getattr(self.model, "peft_config", {}):
            self.model.delete_adapter(name)
        self._forget_prefixes()
        log.info("merge cache: deleted merged adapter %s", lora_key)

    def _forget_prefixes(self) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    # -- Executor ---------------------------------------------------------------------------------------
    def _base_only(self):
        """A context in which no LoRA adapter is applied (`bricks.lora.base_only`)."""
        return self._base_switch(self.model)

    def _masks(self, config: BrickConfig) -> dict | None:
        """The combined mask of `config`'s emergent bricks, FFN neurons or MoE experts (loaded once per brick),
        None without any."""
        return config_masks(self.library, config, self.model.config, self._mask_cache)

    def _ffn_context(self, config: BrickConfig, adapter: str | None):
        """Masked FFN, or compact FFN when no LoRA runs in this group and `compact` is on; for expert bricks,
        routers that pick their top-k among the kept experts only."""
        from bricks.emergent import apply_masks, compact_ffn
        from orchestrator.executors.base import mask_target

        masks = self._masks(config)
        if masks is None:
            return contextlib.nullcontext()
        if mask_target(config) == "experts":
            from bricks.expert_mask import apply_expert_masks

            return apply_expert_masks(self.model, masks, config.mask_mode)
        if self.compact and adapter is None:
            return compact_ffn(self.model, masks, config.mask_mode, cache=self.compact_cache)
        return apply_masks(self.model, masks, config.mask_mode)

    # -- Executor ---------------------------------------------------------------------------------------
    def check(self, requests: Sequence[GenerationRequest]) -> None:
        """Raise one UnsupportedConfigError listing every brick that cannot run here (kind, fit)."""
        from bricks.errors import BrickError

        problems = set()
        for r in requests:
            for b in r.config.bricks:
                if b.key in self._fits:
                    continue
                try:
                    if b.role == "mask":
                        self._masks(BrickConfig(bricks=(b,)))
                    else:
                        self._brick_folder(b.id, b.version)
                    self._fits.add(b.key)
                except (BrickError, KeyError, ValueError) as e:
                    problems.add(f"brick {b.key}: {reason(e)}")
        problems.update(f"request {i}: {p}" for i, p in enumerate(self.prompt_problems(requests)) if p)
        if problems:
            raise UnsupportedConfigError("transformers executor cannot run: " + "; ".join(sorted(problems)))

    def generate(self, requests: Sequence[GenerationRequest], *, on_delta: DeltaCallback | None = None,
                 cancelled: Callable[[int], bool] | None = None) -> list[str]:
        """The completion of each request, in order; `on_delta(i, text)` gets request i's new text as its tokens
        come, when given (the deltas of a request add up to its completion). Once `cancelled(i)` is true (request
        i's caller went away), request i stops at its next token and its text so far is returned."""
        self.check(requests)
        out: list[str] = [""] * len(requests)
        with self._lock:
            for decoding, groups in _by_decoding(requests).items():
                kwargs = dict(max_new_tokens=decoding.max_new_tokens, batch_size=self.batch_size,
                              do_sample=decoding.temperature > 0, temperature=decoding.temperature or 1.0,
                              top_p=decoding.top_p)
                if self._one_pass(requests, groups):
                    idx = [i for g in groups for i in g]
                    try:
                        texts = self._generate_one_pass([requests[i] for i in idx], kwargs,
                                                        self._streamer(idx, on_delta), _local(idx, cancelled))
                    except UnsupportedMixedLoraError as e:  # raised before any token: run the groups one by one
                        log.info("one-pass batch not possible (%s); running each configuration alone", e)
                        self.one_pass_stats["fallbacks"] += 1
                    else:
                        for i, text in zip(idx, texts):
                            out[i] = text
                        continue
                for idx in groups:
                    if cancelled is not None and all(cancelled(i) for i in idx):
                        continue
                    config = requests[idx[0]].config
                    adapter = self._activate(config)
                    prompts = [requests[i].prompt for i in idx]
                    off = self._base_only() if adapter is None else contextlib.nullcontext()
                    with off, self._ffn_context(config, adapter):
                        texts = generate_texts(self.model, self.tokenizer, prompts,
                                               encoded=self._prompt_ids(prompts), fast_decode=self.fast_decode,
                                               streamer=self._streamer(idx, on_delta),
                                               cancelled=_local(idx, cancelled), share_prefixes=self.share_prefixes,
                                               prefix_stats=self.prefix_stats, lean_decode=self.lean_decode,
                                               row_keys=[config.key] * len(idx), prefix_cache=self.prefix_cache,
                                               **kwargs)
                    for i, text in zip(idx, texts):
                        out[i] = text
        return out

    def _one_pass(self, requests: Sequence[GenerationRequest], groups: list[list[int]]) -> bool:
        """Whether `groups` (request indices by configuration) run as one pass: several configurations of fewer
        than `mixed_group_rows` requests each on average (large groups run faster alone: compact masks, one
        adapter), all of kinds the one-pass path runs."""
        rows = sum(len(g) for g in groups)
        return (self.mixed_batches and len(groups) > 1 and rows < self.mixed_group_rows * len(groups)
                and all(_one_pass_kinds(requests[g[0]].config) for g in groups))

    def _streamer(self, idx: list[int], on_delta: DeltaCallback | None):
        """`generate_texts`' streamer factory for requests `idx` (a batch's rows are positions in `idx`)."""
        if on_delta is None:
            return None
        from bricks.streaming import RowStreamer

        sent: dict[int, str] = {}  # shared: a batch split and run again (out of memory) sends nothing twice
        return lambda chunk: RowStreamer(self.tokenizer, [idx[c] for c in chunk], on_delta, sent=sent)

    def _generate_one_pass(self, requests: Sequence[GenerationRequest], kwargs: dict, streamer=None,
                           cancelled: Callable[[int], bool] | None = None) -> list[str]:
        """Requests of several brick configurations in the same batches: each row gathers its own LoRA adapter
        (`bricks.lora.multi`) and neuron mask (`bricks.emergent.row_masks`)."""
        from bricks.emergent.row_masks import row_masks

        adapters = [self._adapter(r.config) for r in requests]
        masks = [self._masks(r.config) for r in requests]
        modes = [r.config.mask_mode for r in requests]
        stack = self._stack([a for a in adapters if a is not None]) if any(a is not None for a in adapters) else None
        self.one_pass_stats["batches"] += 1
        self.one_pass_stats["configs"] += len({r.config.key for r in requests})

        @contextlib.contextmanager
        def rows(chunk: list[int]):
            with contextlib.ExitStack() as ctx:
                ctx.enter_context(self._base_only())  # LoRA layers outside the stack run as the base model
                if stack is not None:
                    ctx.enter_context(stack.pass_for([adapters[i] for i in chunk]))
                if any(m is not None for m in masks):
                    ctx.enter_context(row_masks(self.model, [masks[i] for i in chunk], [modes[i] for i in chunk],
                                                compact=[adapters[i] is None for i in chunk] if self.compact else None,
                                                cache=self.compact_cache))
                yield

        # not compiled: the per-row tensors are made per batch (and masks are hooks, which a compiled step ignores)
        prompts = [r.prompt for r in requests]
        return generate_texts(self.model, self.tokenizer, prompts, encoded=self._prompt_ids(prompts),
                              batch_context=rows, streamer=streamer,
                              fast_decode=dataclasses.replace(self.fast_decode, compile=False), cancelled=cancelled,
                              share_prefixes=self.share_prefixes,
                              row_keys=[r.config.key for r in requests], prefix_stats=self.prefix_stats,
                              lean_decode=self.lean_decode, prefix_cache=self.prefix_cache, **kwargs)

    def _stack(self, needed: Sequence[str]):
        """The loaded adapters stacked for one-pass batches (rebuilt when adapters are loaded or deleted); only
        `needed` when some loaded adapter cannot be stacked. UnsupportedMixedLoraError when `needed` cannot."""
        from bricks.lora.multi import MultiLora

        names = tuple(sorted(self._loaded))
        if self._stacked is None or self._stacked.adapters != names:
            try:
                self._stacked = MultiLora.from_peft(self.model, names)
            except UnsupportedMixedLoraError:
                self._stacked = None
                return MultiLora.from_peft(self.model, needed)
            log.info("stacked %d LoRA adapters for one-pass batches (%.1f MiB)", len(names),
                     self._stacked.nbytes / 2**20)
        return self._stacked

    def complete_constrained(self, prompt: str, grammar) -> str:
        """The base model (no brick) completes `prompt` greedily as JSON of `grammar.json_schema`: for planning."""
        return self.complete_constrained_many([prompt], grammar)[0]

    def complete_constrained_many(self, prompts: Sequence[str], grammar, *, max_new_tokens: int = 256) -> list[str]:
        """`complete_constrained` for many prompts, batched (`bricks.constrained.generate_grammar`)."""
        from bricks.constrained import generate_grammar, grammar_ebnf

        ebnf = grammar_ebnf(grammar)
        with self._lock:
            with self._base_only():
                return generate_grammar(self.model, self.tokenizer, prompts, ebnf, max_new_tokens=max_new_tokens,
                                        context=context_length(self.model.config), batch_size=self.batch_size)

    def close(self) -> None:
        self._forget_prefixes()
        self.model = None
