"""Merge configurations, mask union/intersection, step failure isolation, model-written plans."""

from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError

from bricks.ffn_mask import combine_masks
from orchestrator.api import Orchestrator
from orchestrator.executors.base import UnsupportedConfigError
from orchestrator.plan import BrickConfig, BrickRef, Plan, Step
from policies import Composition, ModelDecomposer, RuleDecomposer, StepListGrammar, TopKWeighted, parse_step_list
from policies.decompose import DecompositionError


def _lora(i, w=1.0):
    return BrickRef(id=i, version=1, kind="lora", weight=w)


def _mask(i):
    return BrickRef(id=i, version=1, kind="ffn_mask")


def test_merge_key_names_method_density_and_masks():
    a, b = _lora("a", 0.7), _lora("b", 0.3)
    ties = BrickConfig(bricks=(a, b), merge="ties", density=0.5)
    assert ties.key == "ties(a@1*0.7,b@1*0.3;d=0.5)"
    assert ties.key != BrickConfig(bricks=(a, b), merge="ties", density=0.7).key
    assert ties.key != BrickConfig(bricks=(a, b), merge="dare_ties", density=0.5).key
    both = BrickConfig(bricks=(a, _mask("m"), _mask("n")), mask_merge="intersection")
    assert both.key == "a@1+intersection(m@1,n@1)" and both.lora_key == "a@1"
    with pytest.raises(ValidationError, match="needs a density"):
        BrickConfig(bricks=(a, b), merge="dare_linear")
    with pytest.raises(ValidationError, match="listed twice"):
        BrickConfig(bricks=(a, a), merge="cat")


def test_composition_defaults_density_and_refuses_single():
    assert Composition("dare_ties").density == 0.5
    assert Composition("cat").density is None
    with pytest.raises(ValueError, match="'single' cannot combine"):
        Composition("single")


def test_snap_weights_drops_under_the_floor_and_rounds_to_the_grid():
    from policies.routing import snap_weights

    assert snap_weights([0.0001398, 0.9999]) == [0.0, 1.0]  # the review's cat(caesar*0.0001398,devowel*0.9999)
    thirds = snap_weights([1, 1, 1])
    assert sorted(thirds) == [0.33, 0.33, 0.34] and sum(thirds) == pytest.approx(1, abs=1e-12)
    assert snap_weights([0.04, 0.5, 0.46]) == [0.0, 0.52, 0.48]  # renormalized after the drop
    assert snap_weights([0.04, 0.96], floor=0.05, grid=0.1) == [0.0, 1.0]
    assert snap_weights([0.2, 0.3], floor=0.0, grid=None) == pytest.approx([0.4, 0.6])
    assert snap_weights([0.001, 0.999], floor=0.0) == [0.0, 1.0]  # rounds to 0: dropped too
    assert snap_weights([0.3, 0.3], floor=0.9) == [1.0, 0.0]  # the largest is always kept (first on a tie)
    with pytest.raises(ValueError, match="non-negative"):
        snap_weights([0.5, -0.1])
    with pytest.raises(ValueError, match="weight_grid must be 1/n"):
        TopKWeighted(weight_grid=0.03)
    with pytest.raises(ValueError, match="weight_floor"):
        TopKWeighted(weight_floor=1.0)


def test_mask_union_and_intersection_per_layer():
    a = {0: torch.tensor([1, 1, 0, 0], dtype=torch.bool), 1: torch.tensor([1, 0, 0, 0], dtype=torch.bool)}
    b = {0: torch.tensor([0, 1, 1, 0], dtype=torch.bool)}  # layer 1 unlisted: dense for b
    union = combine_masks([a, b], "union")
    assert union[0].tolist() == [True, True, True, False] and 1 not in union  # b keeps layer 1 dense
    inter = combine_masks([a, b], "intersection")
    assert inter[0].tolist() == [False, True, False, False] and inter[1].tolist() == [True, False, False, False]
    with pytest.raises(ValueError, match="different sizes"):
        combine_masks([a, {0: torch.ones(3, dtype=torch.bool)}], "union")
    with pytest.raises(ValueError, match="unknown mask merge 'xor'"):
        combine_masks([a], "xor")


class _FlakyExecutor:
    """Upper-cases its prompt's input; fails on every request that uses brick `bad`."""

    name = "fake"
    model_config = None

    def __init__(self):
        self.calls = 0

    def generate(self, requests):
        self.calls += 1
        if any(b.id == "bad" for r in requests for b in r.config.bricks):
            raise UnsupportedConfigError("cannot run brick bad@1")
        return [r.prompt.split("In: ")[1].split("\n")[0].upper() + "!" for r in requests]

    def close(self):
        pass


def test_failing_step_is_named_and_earlier_outputs_kept():
    good = Plan(instruction="x", input="ab", steps=(Step(instruction="s0"), Step(instruction="s1", input_from=0),
                                                     Step(instruction="s2", input_from=1)))
    bad = Plan(instruction="y", input="cd", steps=(
        Step(instruction="s0"), Step(instruction="s1", input_from=0, config=BrickConfig(bricks=(_lora("bad"),))),
        Step(instruction="s2", input_from=1)))
    orc = Orchestrator(planner=SimpleNamespace(library=None), executor=_FlakyExecutor())
    ok, failed = orc._run_plans([good, bad], [0.0, 0.0])
    assert ok.error is None and ok.output == "AB!!!"
    assert failed.error.startswith("step 1 failed: UnsupportedConfigError: cannot run brick bad@1")
    assert failed.output == "" and failed.steps[0].output == "CD!" and failed.steps[0].error is None
    assert failed.steps[2].error == "not run: its input, step 1, failed"


def test_step_list_grammar_prefixes():
    g = StepListGrammar(max_steps=2, max_chars=10)
    assert g.is_prefix('  ["Sort', ) and g.is_prefix('["a", "b"') and g.is_complete('["a", "b"]')
    assert not g.is_prefix('x') and not g.is_prefix('[""') and not g.is_prefix('["a", "b", ')
    assert not g.is_prefix('["' + "x" * 11) and not g.is_prefix('["a"]x') and not g.is_prefix("   ")
    assert g.is_prefix('["say \\"hi\\""') and not g.is_prefix('["a\\q')


def test_parse_step_list_errors_name_the_problem():
    assert parse_step_list('["sort the letters", "reverse"]', 8) == ["Sort the letters.", "Reverse."]
    with pytest.raises(DecompositionError, match="not JSON"):
        parse_step_list('["sort', 8)
    with pytest.raises(DecompositionError, match="not a JSON array of strings"):
        parse_step_list('{"steps": 1}', 8)
    with pytest.raises(DecompositionError, match="3 steps, more than max_steps=2"):
        parse_step_list('["a", "b", "c"]', 2)


def test_model_decomposer_uses_model_then_falls_back():
    answers = iter(['["Sort the letters.", "Reverse the text."]', "not json", '["Translate to French."]'])
    seen = []

    def lm(prompt, grammar):
        seen.append((prompt, grammar.max_steps))
        return next(answers)

    d = ModelDecomposer(lm=lm, max_steps=4)
    text = "Sort the letters and after that reverse the text."
    assert d.split(text) == ["Sort the letters.", "Reverse the text."]
    assert seen[0][0].endswith(f"Task: {text}\nSteps: ") and seen[0][1] == 4
    assert d.split("Sort the letters, then count the letters.") == RuleDecomposer().split(
        "Sort the letters, then count the letters.")  # not JSON -> rules
    assert d.split("Sort the letters.") == ["Sort the letters."]  # invented step -> rules
    assert d.stats == {"model": 1, "fallback": 2}


class _RankedHead(torch.nn.Module):
    """An output head whose next-token ranking never changes: x, ", a, ], [, <eos>, then the rest."""

    def __init__(self, tokenizer):
        super().__init__()
        order = [tokenizer.convert_tokens_to_ids(t) for t in ("x", '"', "a", "]", "[")] + [tokenizer.eos_token_id]
        logits = torch.zeros(len(tokenizer))
        for rank, t in enumerate(order):
            logits[t] = 100.0 - rank
        self.register_buffer("logits", logits)

    def forward(self, hidden):  # [B, T, H] -> [B, T, V]
        return self.logits.expand(*hidden.shape[:-1], -1)


def test_constrained_decoding_writes_only_grammar_text():
    from transformers import LlamaConfig, LlamaForCausalLM

    from bricks.constrained import generate_grammar, grammar_ebnf
    from bricks.toyworld.tokenizer import CHARACTERS, build_tokenizer

    tok = build_tokenizer(characters=CHARACTERS + '[]"')
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)).eval()
    model.lm_head = _RankedHead(tok)
    g = StepListGrammar(max_steps=2, max_chars=3)
    text = generate_grammar(model, tok, ["Task: x\nSteps: "], grammar_ebnf(g))[0]
    assert text == '["xxx"]'  # unconstrained, the model would write "xxxx..."
    assert parse_step_list(text, 2) == ["Xxx."]
