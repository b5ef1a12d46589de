"""Constrained greedy decoding: the model writes only text that a grammar accepts as a prefix.

The grammar is given as two predicates on text, so any grammar (a JSON shape, a list of steps) can be used
without this module knowing it. Works with any tokenizer: each candidate token is decoded and checked.
"""

from __future__ import annotations

from collections.abc import Callable

from bricks.generation import encode_prompt

__all__ = ["generate_constrained"]


def _token_texts(tokenizer) -> list[str | None]:
    cached = getattr(tokenizer, "_brickwork_token_texts", None)
    if cached is not None:
        return cached
    special = set(tokenizer.all_special_ids)
    texts = [None if i in special else tokenizer.decode([i]) for i in range(len(tokenizer))]
    try:
        tokenizer._brickwork_token_texts = texts
    except AttributeError:  # some tokenizers refuse new attributes: recompute next time
        pass
    return texts


def generate_constrained(model, tokenizer, prompt: str, is_prefix: Callable[[str], bool],
                         is_complete: Callable[[str], bool], *, max_new_tokens: int = 256,
                         candidates: int = 64) -> str:
    """Greedy completion of `prompt` that stays a valid prefix under `is_prefix` and stops once complete.

    At each step the `candidates` most likely tokens are tried in order; the first whose text keeps the output a
    valid prefix is taken (end-of-sequence only once `is_complete`). Returns the text written so far when no
    candidate fits or the token budget runs out; the caller checks `is_complete` on it.
    """
    import torch

    from bricks.device import model_device

    device = model_device(model)
    texts = _token_texts(tokenizer)
    eos = tokenizer.eos_token_id
    ids = torch.tensor([encode_prompt(tokenizer, prompt)], device=device)  # [1, T]
    out, past = "", None
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            step = model(input_ids=ids, past_key_values=past, use_cache=True)
            past = step.past_key_values
            order = torch.argsort(step.logits[0, -1], descending=True)[:candidates].tolist()
            chosen = None
            for t in order:
                if t == eos:
                    if is_complete(out):
                        return out
                    continue
                piece = texts[t] if t < len(texts) else None
                if piece and is_prefix(out + piece):
                    chosen = t
                    out += piece
                    break
            if chosen is None or is_complete(out):
                return out
            ids = torch.tensor([[chosen]], device=device)  # [1, 1]: the cache holds the rest
    return out
