"""Constrained decoding on vLLM: structured outputs with the grammar the transformers executor decodes.

The grammar is `bricks.constrained.grammar_ebnf(grammar)`, xgrammar's EBNF of the grammar's JSON schema with its
whitespace bound, sent as `StructuredOutputsParams(grammar=...)`: vLLM's xgrammar backend compiles that text
as it is, so its whitespace settings (engine-wide in vLLM) and its choice of backend for a JSON schema play no
part, and greedy answers equal `bricks.constrained.generate_grammar`'s on the same model (float32).
"""

from __future__ import annotations

from collections.abc import Sequence

from bricks.generation import encode_prompt

__all__ = ["complete_json"]


def complete_json(llm, tokenizer, prompts: Sequence[str], grammar, *, max_new_tokens: int = 256) -> list[str]:
    """Greedy completions of `prompts` as JSON of `grammar.json_schema` on the base model (no LoRA, no mask), one
    engine call, in input order.

    A prompt that leaves no room in the engine's context gets "", and so does every prompt when no token of the
    vocabulary can begin the grammar's text (not sent: vLLM would log an error for each). An answer is cut where
    the grammar stops accepting it (vLLM ends a request whose grammar allows no further token with an error).
    """
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import StructuredOutputsParams

    from bricks.constrained import (
        accepted_prefix,
        can_start,
        decode_tokens,
        grammar_ebnf,
        stop_token_ids,
        token_budgets,
    )

    ebnf = grammar_ebnf(grammar)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    model_config = llm.model_config
    vocab = model_config.get_vocab_size()
    budgets = token_budgets([len(e) for e in encoded], max_new_tokens, model_config.max_model_len)
    rows = [i for i, b in enumerate(budgets) if b > 0]
    if not rows or not can_start(tokenizer, vocab, ebnf):
        return [""] * len(prompts)
    params = [SamplingParams(temperature=0.0, max_tokens=budgets[i], detokenize=False,
                             structured_outputs=StructuredOutputsParams(grammar=ebnf)) for i in rows]
    outs = llm.generate([TokensPrompt(prompt_token_ids=encoded[i]) for i in rows], params, use_tqdm=False)
    stops = stop_token_ids(tokenizer)
    texts = [""] * len(prompts)
    for i, out in zip(rows, outs):
        kept = accepted_prefix(tokenizer, vocab, ebnf, list(out.outputs[0].token_ids), stops)
        texts[i] = decode_tokens(tokenizer, vocab, kept)  # as the transformers executor decodes
    return texts
