"""Routing on unseen wording: spelling repair, the routing head, aliases, and split instructions rejoined."""

from types import SimpleNamespace

import numpy as np
import pytest

from index import BrickDocument, BrickIndex, HashingEmbedder
from index.router_head import RouterHead
from index.spelling import SpellingRepair, edit_distance
from orchestrator.planner import Planner
from orchestrator.reranker import HeadReranker
from policies import BASE_KEY, TopKWeighted, TopOne

TEXTS = ["Reverse the text.", "Write the input backwards.", "Count the letters.", "Remove the vowels.",
         "Shift every letter forward by one.", "Apply a Caesar shift of one."]


def test_edit_distance_counts_adjacent_swaps_once_and_stops_at_the_limit():
    assert edit_distance("revrese", "reverse", 2) == 1  # "re" <-> "er": one swap
    assert edit_distance("txet", "text", 2) == 1
    assert edit_distance("vowl", "vowel", 2) == 1
    assert edit_distance("abc", "xyzuvw", 2) == 3  # over the limit: limit + 1


def test_spelling_repair_fixes_typos_against_the_indexed_words_only():
    repair = SpellingRepair(TEXTS, known=lambda w: w in {"the", "tally", "collate", "writ", "please"})
    assert repair.repair("Revrese the txet.") == "Reverse the text."
    assert repair.repair("Wirte the inpt bakwards!") == "Write the input backwards!"
    assert repair.repair("Remov the vowls, please") == "Remove the vowels, please"
    assert repair.repair("Tally the letters.") == "Tally the letters."  # a known word is never changed
    assert repair.repair("Collate the zzzzzzz.") == "Collate the zzzzzzz."  # nothing near: left alone
    assert repair.repair("Ad it") == "Ad it"  # words under 3 letters are left alone


def test_spelling_repair_uses_the_english_word_list_when_installed():
    pytest.importorskip("spellchecker")
    repair = SpellingRepair(["Tell me the total."])
    assert repair.repair("Tally the totl.") == "Tally the total."  # "tally" is English: not made into "tell"


def _unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_router_head_learns_the_classes_of_its_training_vectors():
    rng = np.random.default_rng(0)
    centers = _unit(rng.normal(size=(3, 16)))
    labels = [c for c in range(3) for _ in range(20)]
    vectors = _unit(centers[labels] + 0.3 * rng.normal(size=(60, 16)))
    head = RouterHead.fit(vectors, labels, 3)
    probs = head.probabilities(centers)
    assert probs.shape == (3, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert list(probs.argmax(axis=1)) == [0, 1, 2]
    with pytest.raises(ValueError, match="one label per vector"):
        RouterHead.fit(vectors, labels[:-1], 3)


def _brick(brick_id, description, examples, aliases=()):
    return SimpleNamespace(key=f"{brick_id}@1", id=brick_id, version=1, kind="lora",
                           manifest=SimpleNamespace(prompt_template=None, description=description,
                                                    examples=list(examples), aliases=list(aliases)))


class AliasLibrary:
    base_examples = ["Reverse the text.", "Count the letters."]
    base_aliases = {"Reverse the text.": ["Mirror the word end to end."]}
    config = SimpleNamespace(canonical_instructions=True)

    def __init__(self, bricks):
        self.bricks = bricks

    def list(self):
        return self.bricks


@pytest.fixture
def alias_planner():
    caesar = _brick("caesar", "Caesar cipher of one.", ["Apply a Caesar shift of one."], ["Rotate letters ROT1 style."])
    docs = [BrickDocument(caesar.key, ("Caesar cipher of one.", "Apply a Caesar shift of one.",
                                       "Rotate letters ROT1 style.")),
            BrickDocument(BASE_KEY, ("Reverse the text.", "Count the letters.", "Mirror the word end to end."))]
    index = BrickIndex.build(docs, HashingEmbedder(256), source_fingerprint="f")
    return Planner(AliasLibrary([caesar]), index, routing=TopOne(threshold=0.3))


def test_an_alias_hit_shows_the_model_the_trained_phrasing(alias_planner):
    step = alias_planner.plan("Rotate letters ROT1 style.", "abc").steps[0]
    assert [b.id for b in step.config.bricks] == ["caesar"]
    assert step.model_instruction == "Apply a Caesar shift of one."  # the alias stands for the first example
    base = alias_planner.plan("Mirror the word end to end.", "abc").steps[0]
    assert base.config.bricks == () and base.model_instruction == "Reverse the text."


def test_misspelt_step_is_repaired_before_search(alias_planner):
    step = alias_planner.plan("Revrese the txet.", "abc").steps[0]
    assert step.instruction == "Revrese the txet."  # the plan keeps the user's words
    assert step.model_instruction == "Reverse the text."
    off = Planner(alias_planner.library, alias_planner.index, routing=TopOne(threshold=0.3, spelling=False))
    assert off.plan("Revrese the txet.", "abc").steps[0].model_instruction is None


def test_reranker_classes_split_the_base_entry_per_base_example(alias_planner):
    targets = alias_planner._alias_targets()
    reranker = HeadReranker(alias_planner.index, targets=targets, groups={}, hidden=())
    assert reranker.classes == 3  # caesar, base "Reverse the text." (with its alias), base "Count the letters."
    vector = alias_planner.index.embedder.embed(["Count the letters."])
    hits = reranker.rerank(vector, 3)[0]
    assert (hits[0].key, hits[0].text) == (BASE_KEY, "Count the letters.") and hits[0].score == pytest.approx(1.0)
    assert {(h.key, h.text) for h in hits} == {(BASE_KEY, "Count the letters."), (BASE_KEY, "Reverse the text."),
                                               ("caesar@1", "Apply a Caesar shift of one.")}


def test_a_split_leaving_a_fragment_that_routes_nowhere_is_one_step(alias_planner):
    chain = alias_planner.plan("Reverse the text, then apply a Caesar shift of one.", "abc")
    assert len(chain.steps) == 2  # every step routes: a chain
    whole = alias_planner.plan("Apply a Caesar shift of one; zq xv.", "abc")
    assert len(whole.steps) == 1 and whole.steps[0].instruction == "Apply a Caesar shift of one; zq xv."
    same = alias_planner.plan("Apply a Caesar shift of one; rotate letters ROT1 style.", "abc")
    assert len(same.steps) == 1  # two clauses, one route: one task told twice


def _hits(*pairs):
    from index import SearchHit

    return [SearchHit(key, score, f"text of {key}") for key, score in pairs]


@pytest.mark.parametrize("policy", [TopOne, TopKWeighted])
def test_abstain_sends_weak_steps_to_the_base_model_only_when_it_serves_them(policy):
    quiet, strict = policy(threshold=0.5), policy(threshold=0.5, abstain=True)
    weak_brick_base_fine = _hits(("caesar@1", 0.45), (BASE_KEY, 0.55))
    weak_everywhere = _hits(("caesar@1", 0.45), (BASE_KEY, 0.30))
    weak_base_first = _hits((BASE_KEY, 0.40), ("caesar@1", 0.35))
    for hits in (weak_brick_base_fine, weak_everywhere, weak_base_first):
        assert quiet.route(hits).is_base and not quiet.route(hits).abstain  # off: weak steps go to the base
    assert strict.route(weak_brick_base_fine).is_base and not strict.route(weak_brick_base_fine).abstain
    for hits in (weak_everywhere, weak_base_first, _hits(("caesar@1", 0.45), ("double@1", 0.4))):
        route = strict.route(hits)
        assert route.abstain and route.is_base and route.reason.startswith("abstain: ")
    assert not strict.route(_hits(("caesar@1", 0.9))).abstain  # a strong route is taken as ever
    calibrated = policy(threshold=0.5, abstain=True, thresholds={BASE_KEY: 0.25})
    assert not calibrated.route(weak_everywhere).abstain  # the base entry's own (calibrated) threshold


def test_an_abstained_step_is_never_run_and_fails_naming_why(alias_planner):
    import dataclasses

    from orchestrator.api import Orchestrator

    class Recorder:
        def __init__(self):
            self.requests = []

        def generate(self, requests):
            self.requests += list(requests)
            return ["out"] * len(requests)

        def close(self):
            pass

    alias_planner.routing = dataclasses.replace(alias_planner.routing, abstain=True, threshold=0.6)
    plan = alias_planner.plan("Qqq zzz www.", "abc")
    assert plan.steps[0].abstain and plan.steps[0].abstain.startswith("abstain: ")
    assert type(plan).from_json(plan.to_json()) == plan
    executor = Recorder()
    orc = Orchestrator(alias_planner, executor)
    result = orc.run("Qqq zzz www.", "abc")
    assert result.output == "" and executor.requests == []
    assert "no brick or base skill serves this step (abstain: " in result.steps[0].error
    assert orc.run("Apply a Caesar shift of one.", "abc").output == "out"  # others run as ever
