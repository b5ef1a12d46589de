"""generate_texts: a batch that runs out of device memory is halved and retried, then named."""

import contextlib

import pytest
import torch

from bricks.generation import GenerationOutOfMemoryError, generate_texts
from bricks.toyworld.tokenizer import build_tokenizer


class _Fake:
    """A model whose `generate` runs out of memory above `fits` rows; it answers each row's last prompt token,
    repeated, so that every row's output shows which prompt it came from."""

    device = torch.device("cpu")

    def __init__(self, fits: int, error=torch.OutOfMemoryError) -> None:
        self.fits, self.error, self.sizes = fits, error, []

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        self.sizes.append(input_ids.shape[0])
        if input_ids.shape[0] > self.fits:
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.cat([input_ids, input_ids[:, -1:].repeat(1, max_new_tokens)], dim=1)  # [B, T + new]


PROMPTS = ["abc", "de", "fghij", "k", "lm", "nopq", "rs", "tuvwx"]


def test_an_out_of_memory_batch_is_halved_and_every_row_keeps_its_output():
    tok = build_tokenizer()
    want = generate_texts(_Fake(fits=99), tok, PROMPTS, max_new_tokens=2)
    assert want == [p[-1] * 2 for p in PROMPTS]
    entered = []

    def context(rows):
        entered.append(list(rows))
        return contextlib.nullcontext()

    fake = _Fake(fits=2, error=torch.cuda.OutOfMemoryError)
    assert generate_texts(fake, tok, PROMPTS, max_new_tokens=2, batch_size=8, batch_context=context) == want
    assert fake.sizes == [8, 4, 2, 2, 4, 2, 2]
    assert [len(r) for r in entered] == [8, 4, 2, 2, 4, 2, 2]  # each retry runs in its own rows' context
    assert sorted(i for r in entered[2:4] + entered[5:] for i in r) == list(range(8))


def test_one_row_that_does_not_fit_is_named_with_the_batch_size_and_prompt_length():
    tok = build_tokenizer()
    fake = _Fake(fits=0)
    with pytest.raises(GenerationOutOfMemoryError) as info:
        generate_texts(fake, tok, ["abcdef", "ab", "abc", "abcd"], max_new_tokens=7, batch_size=4)
    message = str(info.value)
    n = len(tok("ab").input_ids)  # the shortest prompt comes first after sorting by length
    assert message == (f"out of device memory generating a batch of 1 row (halved from a batch of 4) with a prompt "
                       f"of {n} tokens and max_new_tokens 7; shorten the prompt or max_new_tokens, or use a device "
                       f"with more memory")
    assert "\n" not in message and fake.sizes == [4, 2, 1]


def test_other_errors_are_not_retried():
    tok = build_tokenizer()
    fake = _Fake(fits=0, error=RuntimeError)
    with pytest.raises(RuntimeError, match="Tried to allocate"):
        generate_texts(fake, tok, PROMPTS, max_new_tokens=2)
    assert fake.sizes == [8]


def test_encode_prompts_matches_encode_prompt_one_by_one():
    from bricks.generation import encode_prompt, encode_prompts

    tok = build_tokenizer()
    prompts = ["abc", (tok.bos_token or "") + "already has its start", "", "Reverse the text.\nIn: x\nOut: "]
    assert encode_prompts(tok, prompts) == [encode_prompt(tok, p) for p in prompts]
