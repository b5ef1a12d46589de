"""Batched generation with a transformers causal LM (left-padded, greedy or sampled)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bricks.errors import BrickworkError
from bricks.fast_decode import FastDecode, decode_kwargs, fast_decode_active
from bricks.lean_decode import Sampling, decode_rows, growing_cache, lean_problems
from bricks.prefix_cache import PrefixCache, cacheable, fill_cache, prefill_cached, prompt_layers
from bricks.prefix_share import (
    PrefixPlan,
    PrefixStats,
    attention_window,
    plan_prefixes,
    prefill_prefixes,
    shared_layout,
)
from bricks.prompt_batches import left_padded
from bricks.streaming import end_tokens

__all__ = ["generate_texts", "encode_prompt", "encode_prompts", "GeneratedText", "PromptIds",
           "GenerationOutOfMemoryError"]


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """The token ids of `prompt`: special tokens added, unless the prompt already starts with the BOS token (a
    chat template that writes its own), which would otherwise be there twice."""
    bos = getattr(tokenizer, "bos_token", None)
    return tokenizer(prompt, add_special_tokens=not (bos and prompt.startswith(bos))).input_ids


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """`encode_prompt` of each prompt, in at most two tokenizer calls (with and without added special tokens)."""
    bos = getattr(tokenizer, "bos_token", None)
    own = [bool(bos) and p.startswith(bos) for p in prompts]
    out: list[list[int]] = [[] for _ in prompts]
    for flag in (False, True):
        idx = [i for i, o in enumerate(own) if o == flag]
        if idx:
            ids = tokenizer([prompts[i] for i in idx], add_special_tokens=not flag).input_ids
            for i, e in zip(idx, ids):
                out[i] = list(e)
    return out


class GeneratedText(str):
    """A completion's text that knows how many tokens the model wrote for it (its end token not counted), and
    how many its prompt had (special tokens included) when the executor says: what tells an answer cut at
    `max_new_tokens` from one that ended, where tokenizing the text again may count a different number (a BPE
    tokenizer's merges)."""

    tokens: int
    prompt_tokens: int | None

    def __new__(cls, text: str, tokens: int, prompt_tokens: int | None = None) -> GeneratedText:
        self = super().__new__(cls, text)
        self.tokens = tokens
        self.prompt_tokens = prompt_tokens
        return self

    def __reduce__(self):  # pickled with its counts (the server's engine process sends results)
        return GeneratedText, (str(self), self.tokens, self.prompt_tokens)


def _written(row: Sequence[int], ends: set[int]) -> int:
    """Tokens a row of `generate`'s new tokens holds before its first end or padding token."""
    return next((i for i, t in enumerate(row) if t in ends), len(row))


class PromptIds:
    """`encode_prompts` that remembers recent prompts, up to `max_tokens` token ids in all: a step's prompt is
    checked against the context and then generated from, and each would tokenize it again. Thread-safe."""

    def __init__(self, tokenizer, max_tokens: int = 1 << 18) -> None:
        import threading
        from collections import OrderedDict

        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self._ids: OrderedDict[str, list[int]] = OrderedDict()
        self._tokens = 0
        self._lock = threading.Lock()

    def __call__(self, prompts: Sequence[str]) -> list[list[int]]:
        with self._lock:
            known = {p: self._ids.get(p) for p in prompts}
        missing = [p for p, ids in known.items() if ids is None]
        if missing:
            known.update(zip(missing, encode_prompts(self.tokenizer, missing)))
        with self._lock:
            for p in known:
                if p not in self._ids:
                    self._ids[p] = known[p]
                    self._tokens += len(known[p])
                self._ids.move_to_end(p)
            while self._tokens > self.max_tokens and self._ids:
                self._tokens -= len(self._ids.popitem(last=False)[1])
        return [known[p] for p in prompts]


class GenerationOutOfMemoryError(BrickworkError):
    """One row does not fit on the device: a batch that ran out of memory was halved down to a single row."""


def _oom_errors() -> tuple[type, ...]:
    import torch

    found = {getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)}
    return tuple(e for e in found if e is not None)


def _stop_rows(chunk: list[int], cancelled: Callable[[int], bool], *others):
    """`generate`'s stopping criteria: the given ones, and row r once `cancelled(chunk[r])` is true."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class CancelledRows(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):  # -> bool [B]: rows to finish now
            return torch.tensor([cancelled(i) for i in chunk], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([*others, CancelledRows()])


def generate_texts(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 32, batch_size: int = 256,
                   do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                   batch_context: Callable[[list[int]], Any] | None = None,
                   streamer: Callable[[list[int]], Any] | None = None,
                   generate_kwargs: Mapping[str, Any] | None = None,
                   fast_decode: FastDecode | None = None,
                   cancelled: Callable[[int], bool] | None = None,
                   share_prefixes: bool = False, row_keys: Sequence[str] | None = None,
                   prefix_stats: PrefixStats | None = None, lean_decode: bool = False,
                   encoded: Sequence[Sequence[int]] | None = None,
                   prefix_cache: PrefixCache | None = None) -> list[str]:
    """The completion of each prompt (a `GeneratedText`: it knows its token count), without the prompt and
    without special tokens.

    Prompts are grouped by length so that a batch wastes little padding; results keep the input order.
    Each batch runs inside `batch_context(indices)` when given (a context manager; `indices` are the batch's
    rows as positions in `prompts`, top to bottom), with `streamer(indices)` as `generate`'s streamer when
    given, and `generate_kwargs` passed on to `generate`. `fast_decode` (bricks.fast_decode) adds the static
    KV cache and compiled decode step, decided per batch inside its context (where hooks turn compiling off).
    A batch that runs out of device memory is halved and retried, down to one row; one row that does not fit
    raises GenerationOutOfMemoryError naming the batch size and the prompt length. Once `cancelled(i)` is true
    (prompt i's caller went away), row i stops at the next token and keeps what it wrote; a batch whose rows are
    all cancelled before it starts is not run (their results are "").

    With `share_prefixes`, rows of a batch whose prompts start alike (and whose `row_keys`, their brick
    configurations, are equal; None: all alike) compute that start once (`bricks.prefix_share`), when that skips
    at least a quarter of the batch's prompt tokens and the static KV cache is off (counted in `prefix_stats`).
    With `lean_decode`, a batch runs `bricks.lean_decode.decode_rows` (finished rows leave the batch; greedy:
    the same tokens) where `lean_problems` finds nothing against it, else `generate`. `encoded`: the prompts'
    token ids when already known (`encode_prompts` of each). With `prefix_cache` and `row_keys` (and prefix
    sharing on), shared prefixes and a lone prompt's beginning are taken from, and kept in, that store across
    calls (`bricks.prefix_cache`).
    """
    import torch
    from transformers import DynamicCache

    from bricks.device import model_device

    if not prompts:
        return []
    device = model_device(model)  # every input is built where the model's first layer is
    encoded = [list(e) for e in encoded] if encoded is not None else encode_prompts(tokenizer, prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results: list[str] = [GeneratedText("", 0)] * len(prompts)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False}
    oom = _oom_errors()

    fast = fast_decode is not None and fast_decode_active(model, fast_decode)[0]
    share = share_prefixes and not fast
    window = attention_window(model.config) if share else None
    lean = lean_decode and not fast and not lean_problems(model, do_sample=do_sample, generate_kwargs=generate_kwargs)
    eos_ids = end_tokens(tokenizer.eos_token_id)

    def sharing(rows: list, keys) -> PrefixPlan | None:
        """The prefixes `rows` share, when sharing them pays and padding between prefix and rest would not
        count in a sliding attention window."""
        if not share or len(rows) < 2:
            return None
        plan = plan_prefixes(rows, keys)
        if not plan.worth_it(rows) or (window is not None and plan.layout_width(rows) + max_new_tokens > window):
            return None
        return plan

    def run(chunk: list[int]) -> None:
        if cancelled is not None and all(cancelled(i) for i in chunk):
            return
        rows = [encoded[i] for i in chunk]
        keys = [row_keys[i] for i in chunk] if row_keys is not None else None
        plan = sharing(rows, keys)
        ids, mask = shared_layout(rows, plan, pad) if plan is not None else left_padded(rows, pad)
        store = prefix_cache if share and keys is not None else None
        lone = plan is None and store is not None and len(rows) == 1 and len(rows[0]) > 1
        cache, keep = None, 0  # keep: a lone row's first tokens to store once it ran
        if plan is not None or lone:
            target = growing_cache(model.config, max_new_tokens) if lean else DynamicCache(config=model.config)
        if plan is not None:
            context = None if batch_context is None else (lambda reps: batch_context([chunk[r] for r in reps]))
            if store is not None and cacheable(target):
                cache = prefill_cached(model, rows, plan, keys, pad, device, store, context, cache=target)
            else:
                cache = prefill_prefixes(model, rows, plan, pad, device, context, cache=target)
            if prefix_stats is not None:
                prefix_stats.count(plan, rows)
        elif lone and cacheable(target) and (window is None or len(rows[0]) + max_new_tokens <= window):
            cache = target
            found = store.longest(keys[0], rows[0], len(rows[0]) - 1)
            if found is not None:
                fill_cache(cache, found[1])  # each layer's entry where that layer computed it
            else:
                keep = (len(rows[0]) - 1) // store.block * store.block
        width = ids.shape[1]
        ids, mask = ids.to(device), mask.to(device)  # filled on the CPU, copied once per batch
        if lean:
            tokens = decode_rows(
                model, ids, mask, max_new_tokens=max_new_tokens, eos=eos_ids, pad=pad, cache=cache,
                sampling=Sampling(temperature, top_p) if do_sample else None,
                context=None if batch_context is None else (lambda rs: batch_context([chunk[r] for r in rs])),
                stopped=None if cancelled is None else (lambda r: cancelled(chunk[r])),
                streamer=None if streamer is None else streamer(chunk))
            for row, i in enumerate(chunk):
                results[i] = GeneratedText(tokenizer.decode(tokens[row], skip_special_tokens=True), len(tokens[row]),
                                           len(encoded[i]))
        else:
            with batch_context(chunk) if batch_context is not None else contextlib.nullcontext():
                extra = decode_kwargs(model, fast_decode) if fast_decode is not None else {}
                extra.update(generate_kwargs or {})
                if cache is not None:
                    extra["past_key_values"] = cache
                if streamer is not None:
                    extra["streamer"] = streamer(chunk)
                if cancelled is not None:
                    extra["stopping_criteria"] = _stop_rows(chunk, cancelled, *extra.get("stopping_criteria", ()))
                out = model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, pad_token_id=pad,
                    eos_token_id=tokenizer.eos_token_id, **sampling, **extra,
                )  # [B, width + new]
            ends = {*eos_ids, pad}  # rows that ended are padded
            for row, i in enumerate(chunk):
                new = out[row, width:].tolist()
                results[i] = GeneratedText(tokenizer.decode(new, skip_special_tokens=True), _written(new, ends),
                                           len(encoded[i]))
        if keep:  # positions 0..keep-1 of the lone row's cache are its prompt's, as it would compute them alone
            store.put(keys[0], rows[0][:keep], prompt_layers(cache, 0, keep))

    def run_or_split(chunk: list[int], first: int) -> None:
        try:
            run(chunk)
            return
        except oom:
            pass  # out of the handler first, so that its traceback (and the tensors it holds) is gone
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(chunk) == 1:
            halved = f" (halved from a batch of {first})" if first > 1 else ""
            raise GenerationOutOfMemoryError(
                f"out of device memory generating a batch of 1 row{halved} with a prompt of "
                f"{len(encoded[chunk[0]])} tokens and max_new_tokens {max_new_tokens}; shorten the prompt or "
                f"max_new_tokens, or use a device with more memory") from None
        half = len(chunk) // 2
        run_or_split(chunk[:half], first)
        run_or_split(chunk[half:], first)

    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            run_or_split(chunk, len(chunk))
    return results
