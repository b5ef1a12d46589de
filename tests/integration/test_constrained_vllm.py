"""`decomposer="model"` on vLLM: vLLM's structured outputs write what the transformers executor's xgrammar decoder
writes, so the model decomposer gives the same plans on both executors.

On the toy world (the session's engines) the decomposition prompt does not fit the model's context of 256 tokens
and its tokenizer cannot write a bracket, so both fall back to the rules. The plans that the model itself writes
are compared on a tiny random Llama whose tokenizer can write JSON (one more engine, eager, for this module).
"""

import json

import pytest

from bricks.json_grammar import JsonSchemaGrammar
from bricks.prompt import DEFAULT_TEMPLATE
from bricks.toyworld.paths import world_data_dir
from orchestrator.api import make_decomposer
from policies import ModelDecomposer, StepListGrammar
from policies.model_decompose import PLAN_PROMPT

pytestmark = pytest.mark.vllm


def _toy_tasks(per_kind: int = 8) -> list[tuple[str, str]]:
    """(instruction, input) of the toy world's first test rows: single-step and compound (2-3 steps)."""
    tasks = []
    for kind in ("single", "compound"):
        with open(world_data_dir() / f"{kind}_test.jsonl", encoding="utf-8") as f:
            rows = [json.loads(line) for line, _ in zip(f, range(per_kind))]
        tasks += [(r["instruction"], r["input"]) for r in rows]
    return tasks


def test_model_decomposer_plans_on_vllm_as_on_transformers_on_the_toy_world(vllm_executor, transformers_executor,
                                                                            conformance_library):
    from orchestrator.factory import open_planner

    tasks = _toy_tasks()
    planner = open_planner(conformance_library.path)
    plans, stats = {}, {}
    for ex in (vllm_executor, transformers_executor):
        planner.decomposer = make_decomposer("model", ex)
        plans[ex.name] = planner.plan_many(tasks)
        stats[ex.name] = planner.decomposer.stats
    assert plans["vllm"] == plans["transformers"]
    assert stats["vllm"] == stats["transformers"] == {"model": 0, "fallback": len(tasks)}
    assert {len(p.steps) for p in plans["vllm"]} == {1, 2, 3}
    # prompts that fit: no token of the toy vocabulary begins a JSON array, so nothing is written (nor sent)
    assert vllm_executor.complete_constrained_many(["Steps: ", "ab"], StepListGrammar()) == ["", ""]
    assert transformers_executor.complete_constrained("Steps: ", StepListGrammar()) == ""
    # JSON the toy vocabulary can write: an integer, the same on both executors
    sums = [DEFAULT_TEMPLATE.render("Add the two numbers.", x) for x in ("12 30", "7 5", "40 2")]
    integer = JsonSchemaGrammar({"type": "integer"})
    on_vllm = vllm_executor.complete_constrained_many(sums, integer)
    assert on_vllm == transformers_executor.complete_constrained_many(sums, integer)
    assert [json.loads(text) for text in on_vllm] == [42, 12, 42]


@pytest.fixture(scope="module")
def json_executors(tmp_path_factory, vllm_available):
    """(transformers, vLLM) executors on a tiny random Llama (float32, context 1024) whose character tokenizer
    writes JSON, with an empty library; large initial weights keep greedy picks clear of near-ties."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from bricks.fingerprint import model_fingerprint
    from bricks.library import Library
    from bricks.manifest import BaseModelRef
    from bricks.toyworld.tokenizer import CHARACTERS, build_tokenizer
    from orchestrator.executors.transformers import TransformersExecutor
    from orchestrator.executors.vllm.executor import VllmExecutor

    root = tmp_path_factory.mktemp("json-world")
    tok = build_tokenizer(characters=CHARACTERS + '[]{}"')
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
                      initializer_range=0.5, tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).eval().save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    lib = Library.create(root / "lib", BaseModelRef(name="json-tiny", fingerprint=model_fingerprint(root / "model")))
    tf = TransformersExecutor(root / "model", lib, dtype="float32")
    vl = VllmExecutor(root / "model", lib, dtype="float32", max_model_len=1024, max_num_seqs=16, cpu_kv_cache_gib=1,
                      enforce_eager=True)
    yield tf, vl
    vl.close()
    tf.close()


@pytest.mark.slow
def test_vllm_writes_the_constrained_text_transformers_writes_and_plans_alike(json_executors, conformance_library):
    from orchestrator.factory import open_planner

    tf, vl = json_executors
    tasks = _toy_tasks()
    grammar = StepListGrammar(max_steps=3, max_chars=40)
    prompts = [PLAN_PROMPT.format(instruction=instruction) for instruction, _ in tasks]
    on_tf, on_vllm = tf.complete_constrained_many(prompts, grammar), vl.complete_constrained_many(prompts, grammar)
    assert on_vllm == on_tf
    assert vl.complete_constrained(prompts[3], grammar) == on_tf[3]  # alone as in the batch
    parsed = [json.loads(text) for text in on_tf if text.endswith("]")]
    assert len(parsed) >= len(prompts) // 2 and all(1 <= len(steps) <= 3 for steps in parsed)
    assert len(set(on_tf)) > 1
    # the model's steps become the plans (grounding 0: a random model's steps are accepted), routed on the toy library
    planner = open_planner(conformance_library.path)
    plans, stats = {}, {}
    for ex in (tf, vl):
        planner.decomposer = ModelDecomposer(lm=ex.complete_constrained, lm_many=ex.complete_constrained_many,
                                             max_steps=3, grounding=0.0)
        plans[ex.name] = planner.plan_many(tasks)
        stats[ex.name] = planner.decomposer.stats
    assert plans["vllm"] == plans["transformers"]
    assert stats["vllm"] == stats["transformers"] and stats["vllm"]["model"] >= len(tasks) // 2
    # a grammar that dead-ends after its first character: vLLM ends those requests, and the engine lives on
    dead = JsonSchemaGrammar({"enum": ["<>"]})  # no "<" in the vocabulary
    assert vl.complete_constrained_many(["ab", "cd"], dead) == tf.complete_constrained_many(["ab", "cd"], dead)
    assert vl.complete_constrained(prompts[0], grammar) == on_tf[0]
