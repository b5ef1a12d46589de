"""Unseen phrasings: the paraphrase set, rule decomposition of new connectives, canonical phrasings, plan scoring."""

from types import SimpleNamespace

from bricks.toyworld.paraphrases import NEW_CONNECTIVES, PARAPHRASES, paraphrase_rows
from bricks.toyworld.skills import SKILLS
from bricks.toyworld.tasks import CONNECTIVES, FINAL_CONNECTIVES
from index import BrickDocument, BrickIndex, HashingEmbedder
from orchestrator.evaluation import plan_correctness
from orchestrator.plan import BrickConfig, BrickRef, Plan, Step
from orchestrator.planner import Planner
from policies import BASE_KEY, RuleDecomposer, TopOne


def test_paraphrase_set_is_unseen_and_decomposes():
    assert set(PARAPHRASES) == set(SKILLS)
    for skill, phrasings in PARAPHRASES.items():
        assert len(set(phrasings)) >= 10 and not set(phrasings) & set(SKILLS[skill].phrasings)
    trained = {j for j, _ in CONNECTIVES + FINAL_CONNECTIVES}
    assert len(NEW_CONNECTIVES) >= 5 and not {j for j, _ in NEW_CONNECTIVES} & trained
    rows = paraphrase_rows(singles_per_skill=10, compounds=60)
    assert all(SKILLS[r.skills[-1]].apply is not None for r in rows)
    compound = [r for r in rows if len(r.skills) > 1]
    assert len(compound) == 60
    assert all(len(RuleDecomposer().split(r.instruction)) == len(r.skills) for r in rows)


def _brick(brick_id, examples):
    return SimpleNamespace(key=f"{brick_id}@1", id=brick_id, version=1, kind="lora",
                           manifest=SimpleNamespace(prompt_template=None, examples=list(examples), skills=[brick_id]))


class _Library:
    def __init__(self, bricks, base_examples, canonical):
        self.bricks, self.base_examples = bricks, base_examples
        self.config = SimpleNamespace(canonical_instructions=canonical)

    def list(self):
        return self.bricks


def _planner(canonical):
    caesar = ("Apply a Caesar shift of one.", "Shift every letter forward by one.")
    base = ("Reverse the text.", "Sort the letters.")
    docs = [BrickDocument("caesar@1", ("Caesar cipher: shifts letters.", *caesar)), BrickDocument(BASE_KEY, base)]
    index = BrickIndex.build(docs, HashingEmbedder(128), source_fingerprint="f")
    return Planner(_Library([_brick("caesar", caesar)], list(base), canonical), index, routing=TopOne(threshold=0.3))


def test_canonical_phrasing_shown_to_the_model_only_when_the_library_asks():
    text = "Please apply a Caesar shift of one, then reverse the text please."
    on = _planner(True).plan(text, "abc")
    assert [s.model_instruction for s in on.steps] == ["Apply a Caesar shift of one.", "Reverse the text."]
    assert on.steps[0].instruction == "Please apply a Caesar shift of one."  # the trace keeps the user's words
    off = _planner(False).plan(text, "abc")
    assert [s.model_instruction for s in off.steps] == [None, None]
    far = _planner(True).plan("Translate into Klingon.", "abc")  # below threshold: no canonical phrasing
    assert far.steps[0].model_instruction is None


def test_plan_correctness_counts_steps_and_order():
    ref = BrickRef(id="caesar", version=1, kind="lora")

    def plan(*bricks):
        return Plan(instruction="x", steps=tuple(Step(instruction="s", config=BrickConfig(bricks=b)) for b in bricks))

    rows = [{"skills": ["caesar", "reverse"]}, {"skills": ["reverse", "caesar"]}, {"skills": ["caesar"]}]
    plans = [plan((ref,), ()), plan((ref,), ()), plan((ref,), ())]
    score = plan_correctness(rows, plans, {"caesar": "caesar"})
    assert (score.plans_correct, score.steps_correct, score.steps) == (1, 2, 5)  # row 2: wrong order; row 3: wrong step count
