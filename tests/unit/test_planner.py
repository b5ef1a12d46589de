"""The planner without any model: decomposition, routing through a real FAISS index, exclusion, bad input."""

from types import SimpleNamespace

import pytest

from index import BrickDocument, BrickIndex, HashingEmbedder
from orchestrator.planner import Planner
from orchestrator.validation import InputError
from policies import BASE_KEY, TopOne


def _brick(brick_id, kind="lora", template=None):
    return SimpleNamespace(key=f"{brick_id}@1", id=brick_id, version=1, kind=kind,
                           manifest=SimpleNamespace(prompt_template=template))


class FakeLibrary:
    def __init__(self, bricks):
        self.bricks = bricks

    def list(self):
        return self.bricks


@pytest.fixture
def planner():
    docs = [BrickDocument("caesar@1", ("Apply a Caesar shift of one.", "Shift every letter forward by one.")),
            BrickDocument("double@1", ("Double every letter.", "Write each character twice.")),
            BrickDocument(BASE_KEY, ("Reverse the text.", "Sort the letters."))]
    index = BrickIndex.build(docs, HashingEmbedder(128), source_fingerprint="f")
    lib = FakeLibrary([_brick("caesar"), _brick("double", template="Q: {instruction}\n{input}\nA: ")])
    return Planner(lib, index, routing=TopOne(threshold=0.3))


def test_plan_routes_each_step_and_chains_inputs(planner):
    plan = planner.plan("Reverse the text, then apply a Caesar shift of one, then double every letter.", "abc")
    assert [s.instruction for s in plan.steps] == ["Reverse the text.", "Apply a Caesar shift of one.",
                                                   "Double every letter."]
    assert [s.input_from for s in plan.steps] == [None, 0, 1]
    assert [[b.id for b in s.config.bricks] for s in plan.steps] == [[], ["caesar"], ["double"]]
    assert plan.steps[2].prompt_template == "Q: {instruction}\n{input}\nA: "
    assert plan.steps[1].route.startswith("top-1 caesar@1")


def test_excluded_brick_is_never_routed(planner):
    planner.exclude("caesar@1", "does not fit")
    plan = planner.plan("Apply a Caesar shift of one.", "abc")
    assert all(b.id != "caesar" for b in plan.steps[0].config.bricks)
    planner.refresh()
    assert all(b.id != "caesar" for b in planner.plan("Apply a Caesar shift of one.").steps[0].config.bricks)


def test_bad_input_refused_before_search(planner):
    with pytest.raises(InputError, match="instruction is empty"):
        planner.plan(" \n ")
    with pytest.raises(InputError, match="input is not valid UTF-8"):
        planner.plan("Reverse the text.", b"\xff")
