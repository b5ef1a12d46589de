"""Decoding whose finished rows leave the batch (a lean loop beside transformers' `generate`).

`generate` runs every row of a batch until the last one is done: a row that wrote its end token goes on
computing padding through every layer, and its KV cache keeps being copied. Answers of different lengths are the
rule in a server's batch (a word against a paragraph), so here a row that finished leaves the batch:

    tokens = decode_rows(model, ids, mask, max_new_tokens=32, eos=[2], pad=0, context=rows_context)
    # ids, mask [B, W] left-padded; tokens[b]: row b's new tokens, without the end token

Once at least `drop_fraction` of the rows still running have finished (or been cancelled), their KV cache rows,
mask and position rows are dropped and the per-row context (one-pass LoRA slots, row masks) is entered again for
the rows left. Each step is what `generate` computes: positions from the mask, the same cache, `logits_to_keep`,
then the arg-max of the last logits, or with `sampling` transformers' own temperature, top-k and top-p warpers,
a softmax and one multinomial draw per row. Greedy tokens are `generate`'s (tests/integration/
test_lean_decode_zoo.py); sampled ones too for a batch of one under the same seed, and in a larger batch they
come from the same distributions (`generate` also draws for rows that are done, so the random stream differs).

Only where that holds (`lean_problems` names what does not): no logits processor from the model's generation
config other than those warpers, the generic `prepare_inputs_for_generation`, a dynamic cache, no extra
`generate` argument. Everything else runs through `generate`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

__all__ = ["decode_rows", "growing_cache", "lean_problems", "Sampling"]

# generation-config fields that add a logits processor or change the search, with their neutral values
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "num_beams": (1, None), "num_return_sequences": (1, None), "repetition_penalty": (1.0, None),
    "encoder_repetition_penalty": (1.0, None), "no_repeat_ngram_size": (0, None),
    "encoder_no_repeat_ngram_size": (0, None), "bad_words_ids": (None,), "min_length": (0, None),
    "min_new_tokens": (0, None), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
    "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,), "renormalize_logits": (False, None), "guidance_scale": (None, 1.0),
    "watermarking_config": (None,), "stop_strings": (None,), "max_time": (None,), "prefill_chunk_size": (None,),
    "assistant_model": (None,), "prompt_lookup_num_tokens": (None,), "remove_invalid_values": (False, None),
}
# ... and those that add a warper when sampling (temperature, top_k and top_p are applied here)
_NEUTRAL_SAMPLING: dict[str, tuple[Any, ...]] = {
    "min_p": (None,), "typical_p": (1.0, None), "epsilon_cutoff": (0.0, None), "eta_cutoff": (0.0, None),
    "top_h": (None,),
}


@dataclass(frozen=True)
class Sampling:
    """Sampled decoding as `generate(do_sample=True, temperature=..., top_p=...)` does it (top-k: the model's
    generation config, else transformers' default)."""

    temperature: float = 1.0
    top_p: float = 1.0

    def picker(self, model) -> Callable:
        """logits [K, V] (float32) -> tokens [K]: transformers' warpers, a softmax, one multinomial draw per row."""
        import torch
        from transformers import GenerationConfig, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        top_k = getattr(model.generation_config, "top_k", None)
        if top_k is None:
            top_k = GenerationConfig._get_default_generation_params().get("top_k")
        warpers = []
        if self.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(self.temperature))
        if top_k:
            warpers.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
        if self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=self.top_p, min_tokens_to_keep=1))

        def pick(logits):
            for warper in warpers:
                logits = warper(None, logits)
            return torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1).squeeze(1)

        return pick


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def lean_problems(model, *, do_sample: bool = False, generate_kwargs: dict | None = None) -> list[str]:
    """Why `decode_rows` would not compute what `generate` does for `model` (empty: it would)."""
    from transformers import GenerationMixin

    base = _base(model)
    out = []
    if generate_kwargs:
        out.append(f"generate arguments {', '.join(sorted(generate_kwargs))}")
    if getattr(base.config, "is_encoder_decoder", False):
        out.append("an encoder-decoder model")
    if type(base).prepare_inputs_for_generation is not GenerationMixin.prepare_inputs_for_generation:
        out.append(f"{type(base).__name__} prepares its own generation inputs")
    if getattr(base.config, "cache_implementation", None) not in (None, "dynamic"):
        out.append(f"cache {base.config.cache_implementation}")
    config = getattr(base, "generation_config", None)
    for name, neutral in {**_NEUTRAL, **(_NEUTRAL_SAMPLING if do_sample else {})}.items():
        value = getattr(config, name, None) if config is not None else None
        if value not in neutral and not (isinstance(value, (list, tuple, dict)) and not value):
            out.append(f"generation config {name}={value!r}")
    return out


def growing_cache(config, reserve: int):
    """A dynamic cache whose full-attention layers write into buffers with room for `reserve` more positions,
    instead of concatenating (a copy of the whole cache per layer per step); other layers as `DynamicCache`."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        plain_kv = True  # every position's keys and values, as DynamicLayer holds them (bricks.prefix_cache)

        def lazy_initialization(self, key_states, value_states) -> None:
            super().lazy_initialization(key_states, value_states)
            self._buffers = None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n, k = self.get_seq_length(), key_states.shape[-2]
            held = self._buffers
            if (held is None or self.keys.data_ptr() != held[0].data_ptr() or self.keys.shape[0] != held[0].shape[0]
                    or n + k > held[0].shape[-2]):  # [B, heads, cap, d]: (re)made after a row selection or a reorder
                shape = (*key_states.shape[:-2], n + k + reserve, key_states.shape[-1])
                held = (key_states.new_empty(shape), value_states.new_empty(shape))
                if n:
                    held[0][..., :n, :] = self.keys
                    held[1][..., :n, :] = self.values
                self._buffers = held
            held[0][..., n:n + k, :] = key_states
            held[1][..., n:n + k, :] = value_states
            self.keys, self.values = held[0][..., :n + k, :], held[1][..., :n + k, :]
            return self.keys, self.values

    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def _select_rows(cache, index) -> None:
    """Keep rows `index` of every cache layer (on the layer's own device: a model split over devices)."""
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        layer.batch_select_indices(index if keys is None else index.to(keys.device))


@functools.lru_cache(maxsize=None)
def _takes_positions(model_type: type) -> bool:
    return "position_ids" in inspect.signature(model_type.forward).parameters


class _Rows:
    """The rows still in the batch and what each wrote (`live[k]`: the original row of batch row k)."""

    def __init__(self, n: int, eos: Collection[int], stopped: Callable[[int], bool] | None) -> None:
        self.live = list(range(n))
        self.out: list[list[int]] = [[] for _ in range(n)]
        self.done = [False] * n
        self.eos = set(eos)
        self.stopped = stopped

    def take(self, tokens: list[int], pad: int) -> list[int]:
        """Record one step's tokens [K] of the batch rows; what a streamer gets [B] (pad for rows done before)."""
        shown = [pad] * len(self.out)
        for b, t in zip(self.live, tokens):
            if self.done[b]:
                continue
            shown[b] = t
            if t in self.eos:
                self.done[b] = True
                continue
            self.out[b].append(t)
            if self.stopped is not None and self.stopped(b):
                self.done[b] = True  # as generate's stopping criteria: this token kept, none after it
        return shown

    def finished(self) -> list[int]:
        """Batch rows that are done."""
        return [k for k, b in enumerate(self.live) if self.done[b]]


def decode_rows(model, ids, mask, *, max_new_tokens: int, eos: Collection[int], pad: int, cache=None,
                sampling: Sampling | None = None, context: Callable[[list[int]], Any] | None = None,
                stopped: Callable[[int], bool] | None = None, streamer=None,
                drop_fraction: float = 0.25) -> list[list[int]]:
    """Each row's new tokens (without the end token), greedy or with `sampling`; finished rows leave the batch
    (module docstring).

    ids, mask: [B, W] on the model's (first layer's) device, left-padded. `cache`: a dynamic cache that already
    holds the first positions (a shared prefix), else a `growing_cache` is made. `context(rows)`: a context
    manager for a batch of `rows` (original row numbers, top to bottom), entered again when rows leave.
    `stopped(b)`: row b ends after its current token (its caller went away). `streamer`: `put` of the prompt ids,
    then of each step's tokens [B] (pad for rows already done), then `end`, as `generate` calls it."""
    import torch

    base = _base(model)
    pick = (lambda logits: logits.argmax(-1)) if sampling is None else sampling.picker(base)
    n = ids.shape[0]
    cache = cache if cache is not None else growing_cache(base.config, max_new_tokens)
    past = cache.get_seq_length()
    extra: dict[str, Any] = {"use_cache": True, "past_key_values": cache}
    if getattr(base, "_supports_logits_to_keep", lambda: False)():
        extra["logits_to_keep"] = 1
    positions = None  # [B, W], numbered from the mask as generate numbers them
    if _takes_positions(type(base)):
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    attention = None if bool((mask == 1).all()) else mask  # generate drops a mask of ones too
    step_ids = ids[:, past:]  # [K, T], then [K, 1]
    step_pos = None if positions is None else positions[:, past:]
    rows = _Rows(n, eos, stopped)
    if streamer is not None:
        streamer.put(ids)
    with contextlib.ExitStack() as scope:
        if context is not None:
            scope.enter_context(context(rows.live))
        for step in range(max_new_tokens):
            logits = base(input_ids=step_ids, attention_mask=attention, position_ids=step_pos, **extra).logits
            tokens = pick(logits[:, -1].float()).to(ids.device)  # [K]
            shown = rows.take(tokens.tolist(), pad)
            if streamer is not None:
                streamer.put(torch.tensor(shown, dtype=torch.long))
            gone = rows.finished()
            if len(gone) == len(rows.live) or step == max_new_tokens - 1:
                break
            if gone and len(gone) >= drop_fraction * len(rows.live):  # they leave: cache, mask and positions rows
                left = set(gone)
                keep = [k for k in range(len(rows.live)) if k not in left]
                index = torch.tensor(keep, dtype=torch.long, device=ids.device)
                _select_rows(cache, index)
                tokens = tokens[index]
                attention = None if attention is None else attention[index]
                step_pos = None if step_pos is None else step_pos[index]
                rows.live = [rows.live[k] for k in keep]
                if context is not None:
                    scope.close()
                    scope.enter_context(context(rows.live))
            step_ids = tokens[:, None]
            if step_pos is not None:
                step_pos = step_pos[:, -1:] + 1
            if attention is not None:
                attention = torch.cat([attention, attention.new_ones((attention.shape[0], 1))], -1)
    if streamer is not None:
        streamer.end()
    return rows.out
