"""Conformance: every executor gives the reference's greedy outputs for base, LoRA, mask, LoRA + mask, merged
LoRA and mixed batches on the toy world (float32 on CPU, so outputs match exactly).

The reference runs each request alone on transformers with masks applied by zeroing; the executors under test
run the requests together (vLLM: one mixed batch with per-token LoRA and mask slots; transformers: one pass
with per-row stacked LoRA and mask slots when a batch mixes configurations, and grouped, with compact FFN matrices
for mask-only groups, when it does not or when one-pass batches are off).
"""

import dataclasses

import pytest

from bricks.generation import encode_prompts
from bricks.prompt import DEFAULT_TEMPLATE
from orchestrator.executors.base import GenerationRequest, UnsupportedConfigError
from orchestrator.plan import BrickConfig, BrickRef, Decoding

D = Decoding(max_new_tokens=16)
WORDS = ["planet", "brick", "moon", "garden"]


def _ref(id_, version=1, kind="lora", weight=1.0):
    return BrickRef(id=id_, version=version, kind=kind, weight=weight)


def _reqs(instruction, config, inputs=WORDS):
    return [GenerationRequest(DEFAULT_TEMPLATE.render(instruction, x), config, D) for x in inputs]


CAESAR, DOUBLE, DEVOWEL, SUBTRACT = _ref("caesar"), _ref("double", 2), _ref("devowel", 2), _ref("subtract")
KEEP80, KEEP10, KEEP50 = (_ref(n, kind="ffn_mask") for n in ("keep80", "keep10", "keep50"))

CASES = {
    "base": _reqs("Reverse the text.", BrickConfig()) + _reqs("Add the two numbers.", BrickConfig(), ["12 30", "7 5"]),
    "lora": _reqs("Apply a Caesar shift of one.", BrickConfig(bricks=(CAESAR,)))
    + _reqs("Write every letter twice.", BrickConfig(bricks=(DOUBLE,)))
    + _reqs("Remove the vowels.", BrickConfig(bricks=(DEVOWEL,)))
    + _reqs("Subtract the second number from the first.", BrickConfig(bricks=(SUBTRACT,)), ["30 12", "9 4"]),
    "mask": _reqs("Reverse the text.", BrickConfig(bricks=(KEEP80,)))
    + _reqs("Sort the letters.", BrickConfig(bricks=(KEEP10,), mask_mode="ablate"))
    + _reqs("Reverse the text.", BrickConfig(bricks=(KEEP50,))),
    "mask_union": _reqs("Count the letters.", BrickConfig(bricks=(KEEP50, KEEP10), mask_merge="union")),
    "mask_intersection": _reqs("Convert to uppercase.", BrickConfig(bricks=(KEEP80, KEEP50), mask_merge="intersection")),
    "lora_mask": _reqs("Apply a Caesar shift of one.", BrickConfig(bricks=(CAESAR, KEEP80)))
    + _reqs("Write every letter twice.", BrickConfig(bricks=(DOUBLE, KEEP10), mask_mode="ablate")),
    "merged_lora": _reqs("Apply a Caesar shift of one.", BrickConfig(
        bricks=(_ref("caesar", weight=0.5), _ref("double", 2, weight=0.5)), merge="linear"))
    + _reqs("Apply a Caesar shift of one.", BrickConfig(bricks=(CAESAR, DOUBLE), merge="cat")),
}
CASES["mixed"] = [r for name in ("base", "lora", "mask", "lora_mask", "mask_union") for r in CASES[name]][::-1]


@pytest.fixture(scope="module")
def expected(reference_executor):
    return {name: [reference_executor.generate([r])[0] for r in reqs] for name, reqs in CASES.items()}


@pytest.fixture(params=["transformers", "transformers_grouped", "vllm"])
def executor(request):
    return request.getfixturevalue(f"{request.param}_executor")


def test_reference_outputs_are_the_skills(expected):
    assert expected["base"][0] == "tenalp" and expected["base"][4] == "42"
    assert expected["lora"][:2] == ["qmbofu", "csjdl"]
    assert expected["lora"][4] == "ppllaanneett"
    assert expected["mask"][4:8] != expected["base"][:4]  # ablating even 10 % of the neurons changes outputs


@pytest.mark.parametrize("case", list(CASES))
def test_same_greedy_outputs_as_the_reference(executor, expected, case):
    assert executor.generate(CASES[case]) == expected[case]


def test_unsupported_bricks_are_listed_in_one_error(executor):
    bad = [GenerationRequest("x", BrickConfig(bricks=(_ref("nosuch"),)), D),
           GenerationRequest("x", BrickConfig(bricks=(_ref("missing", kind="ffn_mask"),)), D)]
    with pytest.raises(UnsupportedConfigError) as e:
        executor.generate(bad)
    assert "nosuch" in str(e.value) and "missing" in str(e.value)
    assert executor.generate(CASES["base"][:1]) == ["tenalp"]  # the executor still works afterwards


def test_transformers_mixed_case_runs_in_one_pass(transformers_executor, transformers_grouped_executor):
    before = dict(transformers_executor.one_pass_stats)
    transformers_executor.generate(CASES["mixed"])
    transformers_grouped_executor.generate(CASES["mixed"])
    assert transformers_executor.one_pass_stats["batches"] == before["batches"] + 1
    assert transformers_executor.one_pass_stats["configs"] - before["configs"] >= 8  # base, 4 LoRAs, masks, both
    assert transformers_grouped_executor.one_pass_stats["batches"] == 0


@pytest.mark.parametrize("case", ["lora", "mixed"])
def test_streamed_deltas_add_up_to_the_outputs(executor, expected, case):
    deltas: dict[int, list[str]] = {}
    out = executor.generate(CASES[case], on_delta=lambda i, text: deltas.setdefault(i, []).append(text))
    assert out == expected[case]
    assert ["".join(deltas.get(i, [])) for i in range(len(out))] == out
    assert max(len(d) for d in deltas.values()) >= 4  # token by token, not one chunk at the end


def test_adapters_that_cannot_be_stacked_run_grouped(transformers_executor, expected, monkeypatch):
    from bricks.lora.multi import MultiLora, UnsupportedMixedLoraError

    def refuse(model, adapters, mode="auto"):
        raise UnsupportedMixedLoraError("one-pass mixed LoRA cannot run: adapter x uses a LoRA variant (DoRA, ...)")

    monkeypatch.setattr(MultiLora, "from_peft", staticmethod(refuse))
    monkeypatch.setattr(transformers_executor, "_stacked", None)
    before = dict(transformers_executor.one_pass_stats)
    assert transformers_executor.generate(CASES["lora"]) == expected["lora"]
    assert transformers_executor.one_pass_stats["fallbacks"] == before["fallbacks"] + 1  # tried, then ran grouped
    assert transformers_executor.one_pass_stats["batches"] == before["batches"]


def test_large_groups_run_grouped(transformers_executor, expected, monkeypatch):
    monkeypatch.setattr(transformers_executor, "mixed_group_rows", 2)  # the "lora" case averages 2.5 per configuration
    before = dict(transformers_executor.one_pass_stats)
    assert transformers_executor.generate(CASES["lora"]) == expected["lora"]
    assert transformers_executor.one_pass_stats == before


@pytest.mark.parametrize("case", ["lora", "mixed"])
def test_requests_whose_caller_went_away_stop_and_the_others_match(executor, expected, case):
    reqs, want = CASES[case], expected[case]
    first, second = [i for i, w in enumerate(want) if len(w) >= 4][:2]
    gone = {first}  # its caller left before the call; the second's leaves after its first text

    def on_delta(i, text):
        if i == second:
            gone.add(second)

    out = executor.generate(reqs, on_delta=on_delta, cancelled=gone.__contains__)
    assert executor.cancellable
    for i in (first, second):
        assert want[i].startswith(out[i]) and len(out[i]) < len(want[i]), (i, out[i], want[i])
    assert [o for i, o in enumerate(out) if i not in gone] == [w for i, w in enumerate(want) if i not in gone]


@pytest.mark.parametrize("name", ["transformers", "transformers_grouped"])
@pytest.mark.parametrize("case", ["lora", "mixed"])
def test_transformers_rows_that_start_alike_share_their_prefill(request, expected, name, case, monkeypatch):
    executor = request.getfixturevalue(f"{name}_executor")
    before = dataclasses.replace(executor.prefix_stats)
    assert executor.generate(CASES[case]) == expected[case]
    stats = executor.prefix_stats
    assert stats.batches > before.batches and stats.saved_tokens > before.saved_tokens  # it did share, same texts
    monkeypatch.setattr(executor, "share_prefixes", False)
    assert executor.generate(CASES[case]) == expected[case] and stats.batches == executor.prefix_stats.batches


@pytest.mark.parametrize("name", ["transformers", "transformers_grouped"])
@pytest.mark.parametrize("case", ["lora", "mask", "mixed"])
def test_transformers_prefixes_kept_across_calls_give_the_same_texts(request, expected, name, case, monkeypatch):
    executor = request.getfixturevalue(f"{name}_executor")
    store = executor.prefix_cache
    assert store is not None  # on by default
    assert executor.generate(CASES[case]) == expected[case]
    hits = store.stats.hits
    assert executor.generate(CASES[case]) == expected[case]  # the shared prefixes come from the store now
    assert store.stats.hits > hits
    hits = store.stats.hits
    assert [executor.generate([r])[0] for r in CASES[case]] == expected[case]  # so do lone requests' beginnings
    assert store.stats.hits >= hits + len(CASES[case])
    monkeypatch.setattr(executor, "prefix_cache", None)
    assert executor.generate(CASES[case]) == expected[case]


def test_transformers_prefix_store_forgets_when_an_adapter_loads(conformance_library):
    from bricks.toyworld.paths import world_model_dir
    from orchestrator.executors.transformers import TransformersExecutor

    ex = TransformersExecutor(world_model_dir(), conformance_library, dtype="float32")
    try:
        ex.generate(CASES["base"][:4])
        assert {key for key, _ in ex.prefix_cache.entries()} == {"base"}
        ex.generate(CASES["lora"][:1])  # loads caesar: what the model computed before is forgotten
        assert "base" not in {key for key, _ in ex.prefix_cache.entries()}
    finally:
        ex.close()
    assert len(ex.prefix_cache) == 0


@pytest.mark.parametrize("name", ["transformers", "transformers_grouped"])
@pytest.mark.parametrize("case", ["lora", "mixed"])
def test_transformers_lean_decode_loop_and_generate_give_the_same_texts(request, expected, name, case, monkeypatch):
    executor = request.getfixturevalue(f"{name}_executor")
    assert executor.lean_decode  # the default: finished rows leave the batch (bricks.lean_decode)
    assert executor.generate(CASES[case]) == expected[case]
    monkeypatch.setattr(executor, "lean_decode", False)
    assert executor.generate(CASES[case]) == expected[case]


@pytest.mark.parametrize("case", ["lora", "mixed"])
def test_texts_know_how_many_tokens_the_model_wrote(executor, expected, case):
    reqs = [dataclasses.replace(r, decoding=r.decoding.model_copy(update={"max_new_tokens": 4})) for r in CASES[case]]
    cut = executor.generate(reqs)
    full = executor.generate(CASES[case])
    tok = executor.tokenizer  # the toy's character tokenizer: a text's length in tokens is exact
    assert [t.tokens for t in full] == [len(tok(w, add_special_tokens=False).input_ids) for w in expected[case]]
    assert [t.tokens for t in cut] == [min(4, t.tokens) for t in full] and any(t.tokens > 4 for t in full)
    assert [t.prompt_tokens for t in full] == [len(ids) for ids in encode_prompts(tok, [r.prompt for r in reqs])]
