"""The lean greedy loop on every family of the zoo: `generate`'s tokens, with rows leaving the batch as they end,
alone and after a shared-prefix prefill; families whose generation inputs are their own run through `generate`."""

import contextlib

import pytest
import torch
from zoo_models import ZOO, save_zoo_model

from bricks.generation import encode_prompts, generate_texts
from bricks.lean_decode import decode_rows, lean_problems
from bricks.prompt_batches import left_padded

PROMPTS = [f"Reverse the text.\nIn: {w}\nOut: " for w in ("planet", "moon", "garden", "sky", "window")]
OWN_INPUTS = {"phi3"}  # Phi-3 may switch its rope scaling mid-generation, in its own prepare_inputs_for_generation


@pytest.fixture(scope="module")
def tokenizer():
    from bricks.model_io import load_tokenizer
    from bricks.toyworld.paths import world_model_dir

    return load_tokenizer(world_model_dir())


def _cut(rows, eos):
    return [row[:next((i for i, t in enumerate(row) if t in eos), len(row))] for row in rows]


@pytest.mark.parametrize("family", list(ZOO))
def test_decode_rows_give_generates_tokens_on_every_family(family, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    longer = {"n_positions": 256} if family == "gpt2" else {}
    model = AutoModelForCausalLM.from_pretrained(save_zoo_model(family, tmp_path / family, tokenizer, **longer)).eval()
    problems = lean_problems(model, do_sample=False)
    assert bool(problems) == (family in OWN_INPUTS), problems
    pad = tokenizer.pad_token_id
    ids, mask = left_padded(encode_prompts(tokenizer, PROMPTS), pad)
    with torch.inference_mode():
        free = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                              pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)[:, ids.shape[1]:].tolist()
        eos = [free[0][2], free[1][5]]  # a random model rarely writes its end token: two of its own end rows here
        want = _cut(model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                                   pad_token_id=pad, eos_token_id=eos)[:, ids.shape[1]:].tolist(), eos)
        batches = []
        got = decode_rows(model, ids, mask, max_new_tokens=10, eos=eos, pad=pad, drop_fraction=0.01,
                          context=lambda rows: (batches.append(len(rows)), contextlib.nullcontext())[1])
    assert got == want, family
    if len({len(w) for w in want}) > 1:
        assert len(batches) > 1 and batches == sorted(batches, reverse=True)  # rows that ended left the batch
    shared = generate_texts(model, tokenizer, PROMPTS * 2, max_new_tokens=6, share_prefixes=True, lean_decode=True)
    assert shared == generate_texts(model, tokenizer, PROMPTS * 2, max_new_tokens=6)
