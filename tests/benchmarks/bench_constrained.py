"""Constrained decoding benchmark: the hand-written decoder it replaced against xgrammar, batched.

    python tests/benchmarks/bench_constrained.py [--prompts 16] [--max-new-tokens 256] [--repeats 3]

Decodes the model decomposer's prompt (`PLAN_PROMPT`, `StepListGrammar()`) for N toy-world instructions and
prints, side by side in one run, the wall time (best of `--repeats`) of:

- old: the hand-written decoder this replaced (one prompt at a time; the top 64 tokens of each step decoded and
  checked with `StepListGrammar.is_prefix`), copied here as it was;
- new 1-by-1: `bricks.constrained.generate_grammar` one prompt at a time (xgrammar's token masks);
- new batch: `generate_grammar` with every prompt in one batch;

with the tokens each wrote (the old decoder gives up where no top-64 token fits, so it may write fewer), the time
per written token, how many answers are complete step lists, and how many texts old and new share.

On two models: the toy world's (its tokenizer has no bracket or quote, and the prompt does not fit its context
of 256, so no decoder writes anything), and a random Llama of the toy model's shape (hidden 128, 4 layers, FFN
512) whose character vocabulary adds `[]{}"` and whose context is 1024, where every decoder writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time


def _old_generate_constrained(model, tokenizer, prompt, is_prefix, is_complete, *, max_new_tokens=256,
                              candidates=64):
    """The decoder `bricks.constrained` had before xgrammar (one sequence, top-`candidates` tokens per step)."""
    import torch

    from bricks.generation import encode_prompt

    special = set(tokenizer.all_special_ids)
    texts = [None if i in special else tokenizer.decode([i]) for i in range(len(tokenizer))]
    eos = tokenizer.eos_token_id
    ids = torch.tensor([encode_prompt(tokenizer, prompt)])
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
            ids = torch.tensor([[chosen]])
    return out


def _instructions(n: int) -> list[str]:
    from bricks.toyworld.paths import world_data_dir

    out: list[str] = []
    for kind in ("compound", "single"):
        with open(world_data_dir() / f"{kind}_test.jsonl", encoding="utf-8") as f:
            for line in f:
                instruction = json.loads(line)["instruction"]
                if instruction not in out:
                    out.append(instruction)
    return (out[: n // 2] + out[-(n - n // 2):]) if len(out) > n else out


def _json_model():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from bricks.toyworld.tokenizer import CHARACTERS, build_tokenizer

    tok = build_tokenizer(characters=CHARACTERS + '[]{}"')
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=1024,
                      initializer_range=0.2, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg).eval(), tok


def _best(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    from bricks.constrained import generate_grammar, grammar_ebnf
    from bricks.model_io import load_model, load_tokenizer
    from bricks.toyworld.paths import world_model_dir
    from policies import StepListGrammar
    from policies.model_decompose import PLAN_PROMPT

    grammar = StepListGrammar()
    ebnf = grammar_ebnf(grammar)
    prompts = [PLAN_PROMPT.format(instruction=i) for i in _instructions(args.prompts)]
    toy = load_model(world_model_dir(), dtype="float32"), load_tokenizer(world_model_dir())
    print(f"{len(prompts)} decomposition prompts, max_new_tokens={args.max_new_tokens}, best of {args.repeats}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'model':<24}{'old s (tokens)':>16}{'new 1-by-1 s':>14}{'new batch s (tokens)':>22}"
          f"{'ms/token old/1-by-1/batch':>28}{'complete old/new':>18}{'same text':>11}")
    for name, (model, tok) in (("toy world", toy), ("toy-shaped, JSON vocab", _json_model())):
        n = args.max_new_tokens
        generate_grammar(model, tok, prompts[:1], ebnf, max_new_tokens=4)  # warm-up: compile, first forward
        old_s, old = _best(lambda: [_old_generate_constrained(model, tok, p, grammar.is_prefix, grammar.is_complete,
                                                              max_new_tokens=n) for p in prompts], args.repeats)
        one_s, one = _best(lambda: [generate_grammar(model, tok, [p], ebnf, max_new_tokens=n)[0] for p in prompts],
                           args.repeats)
        batch_s, batch = _best(lambda: generate_grammar(model, tok, prompts, ebnf, max_new_tokens=n), args.repeats)
        assert one == batch, "a batch must write what its prompts write one at a time"
        done_old = sum(grammar.is_complete(t) for t in old)
        done_new = sum(grammar.is_complete(t) for t in batch)
        same = sum(a == b for a, b in zip(old, batch))
        n_old, n_new = (sum(len(tok(t, add_special_tokens=False).input_ids) for t in texts) for texts in (old, batch))
        runs = ((old_s, n_old), (one_s, n_new), (batch_s, n_new))
        per = "/".join(f"{1000 * s / k:.1f}" if k else "-" for s, k in runs)
        print(f"{name:<24}{f'{old_s:.2f} ({n_old})':>16}{one_s:>14.2f}{f'{batch_s:.2f} ({n_new})':>22}{per:>28}"
              f"{f'{done_old}/{done_new}':>18}{f'{same}/{len(prompts)}':>11}")


if __name__ == "__main__":
    main()
