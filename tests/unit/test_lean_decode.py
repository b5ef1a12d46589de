"""The lean decoding loop: `generate`'s tokens while finished rows leave the batch, a KV cache that grows in place,
sampling as `generate` samples, cancelled rows and streamers as `generate` treats them, and `generate` wherever
the loop would differ."""

import contextlib

import pytest
import torch

from bricks.generation import encode_prompts, generate_texts
from bricks.lean_decode import Sampling, decode_rows, growing_cache, lean_problems
from bricks.prompt_batches import left_padded
from bricks.streaming import RowStreamer

PROMPTS = [f"{task}\nIn: {word}\nOut: " for task, word in [
    ("Sort the letters.", "dcba"), ("Reverse the text.", "planet"), ("Write every letter twice.", "moon"),
    ("Reverse the text.", "a"), ("Convert to uppercase.", "garden"), ("Count the letters.", "sky")]]


@pytest.fixture(scope="module")
def world():
    """(model, tokenizer): the toy world's trained model, whose answers end at different steps."""
    from bricks.model_io import load_model, load_tokenizer
    from bricks.toyworld.paths import world_model_dir

    return load_model(world_model_dir(), dtype="float32", device="cpu"), load_tokenizer(world_model_dir())


def _batch(tok):
    return left_padded(encode_prompts(tok, PROMPTS), tok.pad_token_id)


def _generate(model, tok, ids, mask, eos, **kwargs):
    """`generate`'s new tokens per row, cut at the first end token."""
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, pad_token_id=tok.pad_token_id,
                             eos_token_id=eos, **{"do_sample": False, **kwargs})[:, ids.shape[1]:]
    rows = []
    for row in out.tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows


def _ending_tokens(model, tok, ids, mask):
    """The end token; the rows of the batch end at different steps, some within 10 tokens and some not."""
    lengths = [len(row) for row in _generate(model, tok, ids, mask, [tok.eos_token_id])]
    assert len(set(lengths)) >= 3 and min(lengths) < 10, lengths
    return [tok.eos_token_id]


def test_rows_leave_the_batch_as_they_finish_and_the_tokens_are_generates(world):
    model, tok = world
    ids, mask = _batch(tok)
    eos = _ending_tokens(model, tok, ids, mask)
    batches = []

    @contextlib.contextmanager
    def context(rows):
        batches.append(list(rows))
        yield

    with torch.inference_mode():
        lean = decode_rows(model, ids, mask, max_new_tokens=10, eos=eos, pad=tok.pad_token_id, context=context,
                           drop_fraction=0.01)
    assert lean == _generate(model, tok, ids, mask, eos)
    assert batches[0] == list(range(len(PROMPTS))) and len(batches) >= 2  # entered again for the rows left
    assert all(set(later) < set(earlier) for earlier, later in zip(batches, batches[1:]))


def test_a_stopped_row_keeps_its_token_and_no_more_and_streamers_see_what_generate_shows(world):
    model, tok = world
    ids, mask = _batch(tok)
    eos = _ending_tokens(model, tok, ids, mask)
    from bricks.generation import _stop_rows

    def run(lean: bool):
        deltas: list[tuple[int, str]] = []
        calls = {1: 0}

        def stopped(b):  # row 1 stops after its third token
            if b != 1:
                return False
            calls[1] += 1
            return calls[1] >= 3

        streamer = RowStreamer(tok, list(range(len(PROMPTS))), lambda i, t: deltas.append((i, t)), eos_token_id=eos)
        with torch.inference_mode():
            if lean:
                tokens = decode_rows(model, ids, mask, max_new_tokens=10, eos=eos, pad=tok.pad_token_id,
                                     stopped=stopped, streamer=streamer)
            else:
                tokens = _generate(model, tok, ids, mask, eos, streamer=streamer,
                                   stopping_criteria=_stop_rows(list(range(len(PROMPTS))), stopped))
        return tokens, deltas

    lean, lean_deltas = run(True)
    plain, plain_deltas = run(False)
    assert len(lean[1]) == 3 and lean == [row if i != 1 else row[:3] for i, row in enumerate(plain)]
    assert sorted(lean_deltas) == sorted(plain_deltas) and lean_deltas


def test_the_growing_cache_holds_what_the_dynamic_cache_holds_through_a_row_selection(world):
    from transformers import DynamicCache

    model, tok = world
    ids, mask = _batch(tok)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    caches = [DynamicCache(config=model.config), growing_cache(model.config, reserve=2)]  # 2: it must grow again
    logits = []
    with torch.inference_mode():
        for cache in caches:
            steps = [model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache).logits]
            m, step, pos = mask, steps[0][:, -1:].argmax(-1), positions[:, -1:]
            for i in range(4):
                if i == 2:
                    keep = torch.tensor([0, 2, 5])
                    cache.batch_select_indices(keep)
                    m, step, pos = m[keep], step[keep], pos[keep]
                m, pos = torch.cat([m, m.new_ones((m.shape[0], 1))], -1), pos + 1
                steps.append(model(input_ids=step, attention_mask=m, position_ids=pos, past_key_values=cache).logits)
                step = steps[-1][:, -1:].argmax(-1)
            logits.append(steps)
    for a, b in zip(*logits):
        assert torch.equal(a, b)
    for plain, grown in zip(caches[0].layers, caches[1].layers):
        assert torch.equal(plain.keys, grown.keys) and torch.equal(plain.values, grown.values)


def test_what_the_loop_cannot_do_is_named_and_runs_through_generate(world):
    model, tok = world
    assert lean_problems(model, do_sample=False) == [] and lean_problems(model, do_sample=True) == []
    assert lean_problems(model, do_sample=False, generate_kwargs={"logits_processor": []}) == [
        "generate arguments logits_processor"]

    class OwnInputs(type(model)):
        def prepare_inputs_for_generation(self, *args, **kwargs):
            return super().prepare_inputs_for_generation(*args, **kwargs)

    own = OwnInputs(model.config).eval()
    own.load_state_dict(model.state_dict())
    assert lean_problems(own, do_sample=False) == ["OwnInputs prepares its own generation inputs"]

    penalised = type(model)(model.config).eval()
    penalised.load_state_dict(model.state_dict())
    penalised.generation_config.repetition_penalty = 3.0
    assert lean_problems(penalised, do_sample=False) == ["generation config repetition_penalty=3.0"]
    # the penalty changes the texts, and the lean flag does not drop it: generate runs
    kept = generate_texts(penalised, tok, PROMPTS, max_new_tokens=8, lean_decode=True)
    assert kept == generate_texts(penalised, tok, PROMPTS, max_new_tokens=8)
    assert kept != generate_texts(model, tok, PROMPTS, max_new_tokens=8)
    penalised.generation_config.repetition_penalty = 1.0
    penalised.generation_config.typical_p = 0.5  # a warper only sampling uses
    assert lean_problems(penalised, do_sample=False) == []
    assert lean_problems(penalised, do_sample=True) == ["generation config typical_p=0.5"]


def test_a_sampled_row_draws_what_generate_draws_under_the_same_seed(tiny):
    model, tok = tiny  # a random model: flat distributions, so draws differ from the arg-max
    greedy = generate_texts(model, tok, PROMPTS[:3], max_new_tokens=10)
    sampled = []
    for seed, prompt in enumerate(PROMPTS[:3]):
        ids, mask = left_padded(encode_prompts(tok, [prompt]), tok.pad_token_id)
        torch.manual_seed(seed)
        with torch.inference_mode():
            lean = decode_rows(model, ids, mask, max_new_tokens=10, eos=[tok.eos_token_id], pad=tok.pad_token_id,
                               sampling=Sampling(temperature=2.5, top_p=0.9))
        torch.manual_seed(seed)
        assert lean == _generate(model, tok, ids, mask, [tok.eos_token_id], do_sample=True, temperature=2.5,
                                 top_p=0.9)
        sampled.append(tok.decode(lean[0], skip_special_tokens=True))
    assert sampled != greedy  # at this temperature it did sample


def test_a_sampled_batch_at_a_low_temperature_gives_the_greedy_texts(world):
    model, tok = world
    assert (generate_texts(model, tok, PROMPTS, max_new_tokens=10, do_sample=True, temperature=1e-4,
                           lean_decode=True) == generate_texts(model, tok, PROMPTS, max_new_tokens=10))


@pytest.mark.parametrize("share", [False, True])
def test_generate_texts_gives_the_same_texts_lean_or_not(world, share):
    model, tok = world
    prompts = PROMPTS * 3
    assert (generate_texts(model, tok, prompts, max_new_tokens=8, lean_decode=True, share_prefixes=share)
            == generate_texts(model, tok, prompts, max_new_tokens=8))


def test_prompt_ids_remember_recent_prompts_within_their_token_budget(world):
    from bricks.generation import PromptIds, encode_prompts

    _, tok = world
    calls = []

    class Counting:
        bos_token = tok.bos_token

        def __call__(self, texts, **kwargs):
            calls.append(list(texts))
            return tok(texts, **kwargs)

    ids = PromptIds(Counting(), max_tokens=3 * len(encode_prompts(tok, PROMPTS[:1])[0]))
    assert ids(PROMPTS[:2]) == encode_prompts(tok, PROMPTS[:2])
    assert ids([PROMPTS[1], PROMPTS[0], PROMPTS[1]]) == encode_prompts(tok, [PROMPTS[1], PROMPTS[0], PROMPTS[1]])
    assert calls == [PROMPTS[:2]]  # the second call tokenized nothing
    ids(PROMPTS[2:6])  # past the budget: the oldest prompts are forgotten
    ids(PROMPTS[:1])
    assert calls[-1] == PROMPTS[:1] and ids._tokens <= ids.max_tokens


@pytest.mark.parametrize("lean", [True, False])
def test_texts_know_how_many_tokens_the_model_wrote(world, lean):
    from bricks.generation import GeneratedText

    model, tok = world
    ended = generate_texts(model, tok, PROMPTS, max_new_tokens=40, lean_decode=lean)
    cut = generate_texts(model, tok, PROMPTS, max_new_tokens=3, lean_decode=lean)
    assert all(isinstance(t, GeneratedText) for t in ended + cut)
    assert [t.tokens for t in ended] == [len(tok(t, add_special_tokens=False).input_ids) for t in ended]
    assert all(t.tokens < 40 for t in ended) and [t.tokens for t in cut] == [min(3, t.tokens) for t in ended]
    assert any(t.tokens > 3 for t in ended)  # some were cut
    assert [t.prompt_tokens for t in ended] == [len(ids) for ids in encode_prompts(tok, PROMPTS)]
