"""Constrained decoding of JSON with xgrammar: the model writes only text of a JSON schema, many prompts at once.

A JSON schema is turned into one xgrammar grammar (`json_ebnf`: EBNF text, whitespace runs bounded), so both
executors decode exactly the same grammar: `generate_grammar` here (a transformers model, every prompt of a batch
in one `generate` call, left-padded, greedy, each row masked by its own `xgrammar.GrammarMatcher`), and vLLM's
structured outputs with that EBNF text (`orchestrator.executors.vllm`). A grammar value (`JsonGrammar`: a
`json_schema` and `max_blank`) says what to decode; `StepListGrammar` and `JsonSchemaGrammar` are two.

Each row gets at most `max_new_tokens` tokens and no more than the model's context leaves after its prompt (a
prompt that leaves no room gets ""); a row stops once its JSON value is complete, or when the grammar allows no
token of the vocabulary (a tokenizer that cannot write the JSON it needs): its text is what was written so far.
Compiled grammars are cached per tokenizer and vocabulary size (bounded).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bricks.errors import ConfigError, MissingExtraError
from bricks.generation import encode_prompt
from bricks.prompt_batches import left_padded

__all__ = ["JsonGrammar", "json_ebnf", "grammar_ebnf", "generate_json", "generate_grammar", "token_budgets",
           "stop_token_ids", "accepted_prefix", "decode_tokens", "can_start", "XgrammarMissingError"]

log = logging.getLogger(__name__)

_COMPILERS: OrderedDict[tuple[int, int], _Compiler] = OrderedDict()  # by (id(tokenizer), vocabulary size)
_MAX_COMPILERS = 8
_CACHE_BYTES = 64 * 2**20  # compiled grammars kept per compiler
_LOCK = threading.Lock()


class XgrammarMissingError(MissingExtraError):
    """xgrammar does not import (a dependency of brickwork, and of vLLM)."""


class JsonGrammar(Protocol):
    """What to decode: a JSON schema, and the most whitespace characters in a row between its elements."""

    @property
    def json_schema(self) -> Mapping[str, Any]: ...

    @property
    def max_blank(self) -> int: ...


def _xgrammar():
    try:
        import xgrammar
    except ImportError as e:
        raise XgrammarMissingError(f"constrained decoding needs xgrammar ({e}); install it with "
                                   "`pip install 'xgrammar>=0.2.8'` (a dependency of brickwork)") from None
    return xgrammar


@functools.lru_cache(maxsize=256)
def _ebnf(schema_text: str, max_whitespace: int | None) -> str:
    xgr = _xgrammar()
    try:
        grammar = xgr.Grammar.from_json_schema(schema_text, any_whitespace=True, max_whitespace_cnt=max_whitespace)
    except Exception as e:  # noqa: BLE001 (xgrammar's reasons, as one line)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"JSON schema {schema_text[:80]!r} cannot be made a grammar: {first}") from None
    return str(grammar)


def json_ebnf(schema: Mapping[str, Any] | str, *, max_whitespace: int | None = None) -> str:
    """The xgrammar EBNF text of JSON values of `schema` (a mapping or JSON text), any whitespace between elements
    but at most `max_whitespace` characters in a row (None: unbounded). Cached."""
    if max_whitespace is not None and max_whitespace < 1:
        raise ConfigError(f"max_whitespace must be at least 1 or None, got {max_whitespace}")
    if isinstance(schema, str):
        text = schema
    else:
        try:
            text = json.dumps(schema)  # key order kept: it is the order the grammar writes properties in
        except (TypeError, ValueError) as e:
            raise ConfigError(f"a JSON schema must be JSON itself: {e}") from None
    return _ebnf(text, max_whitespace)


def grammar_ebnf(grammar: JsonGrammar) -> str:
    """The EBNF text of a grammar value: its `json_schema`, whitespace runs at most its `max_blank`."""
    schema = getattr(grammar, "json_schema", None)
    if schema is None:
        raise ConfigError(f"grammar {type(grammar).__name__} has no json_schema; constrained decoding needs one")
    return json_ebnf(schema, max_whitespace=getattr(grammar, "max_blank", None))


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """The tokens that end a constrained answer: the tokenizer's end-of-sequence token and the generation
    config's `eos_token_id` (one or a list), as vLLM stops on."""
    ids = [getattr(tokenizer, "eos_token_id", None)]
    extra = getattr(generation_config, "eos_token_id", None)
    ids += list(extra) if isinstance(extra, (list, tuple)) else [extra]
    stops = list(dict.fromkeys(int(i) for i in ids if i is not None))
    if not stops:
        raise ConfigError(f"tokenizer {type(tokenizer).__name__} has no end-of-sequence token; constrained "
                          "decoding needs one to end an answer")
    return stops


def token_budgets(prompt_lengths: Sequence[int], max_new_tokens: int, context: int | None) -> list[int]:
    """Tokens each prompt may get: `max_new_tokens`, but no more than `context` (None: unbounded) leaves."""
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    return [max_new_tokens if context is None else max(0, min(max_new_tokens, context - n)) for n in prompt_lengths]


@dataclass(frozen=True)
class _Compiler:
    tokenizer: Any  # held, so that its id is not reused while cached
    compiler: Any  # xgrammar.GrammarCompiler (it caches compiled grammars, up to _CACHE_BYTES)
    pieces: tuple[bytes, ...]  # each token's bytes as the grammar reads them (b"" for special tokens)


def _compiler(tokenizer, vocab_size: int) -> _Compiler:
    """xgrammar's compiler for `tokenizer` over `vocab_size` logits (kept per tokenizer, bounded)."""
    xgr = _xgrammar()
    key = (id(tokenizer), vocab_size)
    with _LOCK:
        entry = _COMPILERS.get(key)
        if entry is None or entry.tokenizer is not tokenizer:
            try:
                info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
            except Exception as e:  # noqa: BLE001 (xgrammar's reasons, as one line)
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise ConfigError(f"tokenizer {type(tokenizer).__name__} cannot be used for constrained decoding: "
                                  f"{first}") from None
            compiler = xgr.GrammarCompiler(info, cache_enabled=True, cache_limit_bytes=_CACHE_BYTES)
            special = set(getattr(tokenizer, "all_special_ids", ()))
            pieces = tuple(b"" if i in special else p for i, p in enumerate(info.decoded_vocab))
            entry = _Compiler(tokenizer, compiler, pieces)
            _COMPILERS[key] = entry
        _COMPILERS.move_to_end(key)
        while len(_COMPILERS) > _MAX_COMPILERS:
            _COMPILERS.popitem(last=False)
    return entry


def _compiled(tokenizer, vocab_size: int, ebnf: str):
    """The grammar compiled for `tokenizer` over `vocab_size` logits."""
    return _compiler(tokenizer, vocab_size).compiler.compile_grammar(ebnf)


def decode_tokens(tokenizer, vocab_size: int, token_ids: Sequence[int]) -> str:
    """The text of tokens a grammar accepted, as the grammar read it: their bytes joined, special tokens left out
    (a tokenizer's own `decode` may differ, e.g. one without a decoder puts spaces between tokens)."""
    pieces = _compiler(tokenizer, vocab_size).pieces
    return b"".join(pieces[t] for t in token_ids).decode("utf-8", errors="replace")


def accepted_prefix(tokenizer, vocab_size: int, ebnf: str, token_ids: Sequence[int],
                    stops: Sequence[int] | None = None) -> list[int]:
    """The longest start of `token_ids` the grammar accepts, up to (without) the first stop token."""
    xgr = _xgrammar()
    stops = list(stops) if stops is not None else stop_token_ids(tokenizer)
    matcher = xgr.GrammarMatcher(_compiled(tokenizer, vocab_size, ebnf), override_stop_tokens=stops)
    kept: list[int] = []
    for t in token_ids:
        if t in stops or not matcher.accept_token(int(t)):
            break
        kept.append(int(t))
    return kept


def can_start(tokenizer, vocab_size: int, ebnf: str) -> bool:
    """Whether any token of the vocabulary can begin text of the grammar (not so when the tokenizer cannot write
    the JSON's first character)."""
    xgr = _xgrammar()
    matcher = xgr.GrammarMatcher(_compiled(tokenizer, vocab_size, ebnf))
    bitmask = xgr.allocate_token_bitmask(1, vocab_size)  # [1, ceil(V/32)]
    matcher.fill_next_token_bitmask(bitmask, 0)
    return bool(bitmask.any())


def _vocab_width(model) -> int:
    """How many logits the model writes per position (its output embedding's rows, else config.vocab_size)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is not None and weight.dim() == 2:
        return int(weight.shape[0])
    return int(model.config.vocab_size)


class _GrammarRows:
    """A transformers LogitsProcessor: row r may only take the tokens its grammar matcher allows, and takes a stop
    token once its budget is spent, its value is complete or no token is allowed."""

    def __init__(self, compiled, budgets: Sequence[int], stops: Sequence[int]) -> None:
        xgr = _xgrammar()
        self.xgr, self.stops, self.budgets = xgr, set(stops), list(budgets)
        self.stop = stops[0]
        self.matchers = [xgr.GrammarMatcher(compiled, override_stop_tokens=list(stops)) for _ in budgets]
        self.live = [True] * len(budgets)
        self.written = [0] * len(budgets)
        self.bitmask = xgr.allocate_token_bitmask(len(budgets), compiled.tokenizer_info.vocab_size)  # [B, ceil(V/32)]
        self.started = False

    def __call__(self, input_ids, scores):  # input_ids: [B, T]; scores: [B, V] float32, changed in place
        import torch

        if self.started:  # the token each row took last step
            for r, t in enumerate(input_ids[:, -1].tolist()):
                if self.live[r]:
                    self.written[r] += 1
                    if t in self.stops or not self.matchers[r].accept_token(t):
                        self.live[r] = False
        self.started = True
        rows = []
        for r, matcher in enumerate(self.matchers):
            if self.live[r] and (self.written[r] >= self.budgets[r] or matcher.is_terminated()):
                self.live[r] = False
            if self.live[r]:
                matcher.fill_next_token_bitmask(self.bitmask, r)
                if not bool(self.bitmask[r].any()):  # no token of the vocabulary fits: stop here
                    self.live[r] = False
                else:
                    rows.append(r)
        if rows:
            self.xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device), indices=rows)
        ended = [r for r in range(len(self.live)) if not self.live[r]]
        if ended:
            scores[ended] = -torch.inf
            scores[ended, self.stop] = 0.0
        return scores


def generate_grammar(model, tokenizer, prompts: Sequence[str], ebnf: str, *, max_new_tokens: int = 256,
                     context: int | None = None, batch_size: int = 64) -> list[str]:
    """Greedy completions of `prompts` under the grammar `ebnf` (see `json_ebnf`), in input order.

    Prompts run in batches of `batch_size` (grouped by length), each one `generate` call with the KV cache.
    `context`: the most tokens (prompt + answer) the model attends to (None: the config's
    `max_position_embeddings`, when it has one).
    """
    import torch
    from transformers import GenerationConfig, LogitsProcessorList

    from bricks.device import model_device

    if not prompts:
        return []
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if context is None:
        context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    width = _vocab_width(model)
    compiled = _compiled(tokenizer, width, ebnf)
    stops = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    budgets = token_budgets([len(e) for e in encoded], max_new_tokens, context)
    results = [""] * len(prompts)
    for i, b in enumerate(budgets):
        if b == 0:
            log.info("constrained decoding: the prompt is %d tokens, the model's context %s: no room for an answer",
                     len(encoded[i]), context)
    if not can_start(tokenizer, width, ebnf):
        return results  # no token can begin the JSON: every answer is ""
    order = sorted((i for i, b in enumerate(budgets) if b > 0), key=lambda i: len(encoded[i]))
    device = model_device(model)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            ids, mask = left_padded([encoded[i] for i in chunk], pad)  # [B, T]
            length = ids.shape[1]
            rows = _GrammarRows(compiled, [budgets[i] for i in chunk], stops)
            greedy = GenerationConfig(max_new_tokens=max(budgets[i] for i in chunk), do_sample=False, num_beams=1,
                                      eos_token_id=stops, pad_token_id=pad)  # not the model's: no penalties
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=greedy,
                                 logits_processor=LogitsProcessorList([rows]))  # [B, T + new]
            for row, i in enumerate(chunk):
                new = out[row, length:length + budgets[i]].tolist()
                cut = next((k for k, t in enumerate(new) if t in rows.stops), len(new))
                results[i] = decode_tokens(tokenizer, width, new[:cut])
    return results


def generate_json(model, tokenizer, prompts: Sequence[str], schema: Mapping[str, Any] | str, *,
                  max_new_tokens: int = 256, max_whitespace: int | None = 2, context: int | None = None,
                  batch_size: int = 64) -> list[str]:
    """Greedy completions of `prompts` that are JSON values of `schema` (or what was written of one when the
    budget ran out or the tokenizer cannot write what the schema needs), all prompts batched; see
    `generate_grammar`."""
    return generate_grammar(model, tokenizer, prompts, json_ebnf(schema, max_whitespace=max_whitespace),
                            max_new_tokens=max_new_tokens, context=context, batch_size=batch_size)
