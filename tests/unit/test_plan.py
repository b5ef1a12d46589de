import pytest
from pydantic import ValidationError

from orchestrator import BrickConfig, BrickRef, Decoding, Plan, PlanError, Step


def _plan():
    lora = BrickRef(id="caesar", version=2, kind="lora", weight=1.0, score=0.91)
    return Plan(instruction="Shift, then reverse.", input="abc", steps=(
        Step(instruction="Shift every letter forward by one.", config=BrickConfig(bricks=(lora,)), route="top-1"),
        Step(instruction="Reverse the text.", input_from=0, decoding=Decoding(max_new_tokens=8)),
    ))


def test_plan_json_round_trip():
    plan = _plan()
    assert Plan.from_json(plan.to_json()) == plan
    assert plan.steps[0].config.key == "caesar@2"
    assert plan.steps[1].config.key == "base"


def test_plan_refuses_forward_inputs_and_bad_json():
    with pytest.raises(ValidationError, match="expected a step before 0"):
        Plan(instruction="x", steps=(Step(instruction="a", input_from=0),))
    with pytest.raises(PlanError, match="steps"):
        Plan.from_json('{"instruction": "x", "steps": []}')
    with pytest.raises(PlanError, match="invalid plan"):
        Plan.from_json("not json")


def test_several_loras_need_a_merge_method_and_key_is_order_free():
    a = BrickRef(id="a", version=1, kind="lora", weight=0.7)
    b = BrickRef(id="b", version=1, kind="lora", weight=0.3)
    with pytest.raises(ValidationError, match="need a merge method"):
        BrickConfig(bricks=(a, b))
    assert BrickConfig(bricks=(a, b), merge="cat").key == BrickConfig(bricks=(b, a), merge="cat").key


def test_waves_group_independent_steps():
    plan = Plan(instruction="x", steps=(Step(instruction="a"), Step(instruction="b"), Step(instruction="c", input_from=0),
                                        Step(instruction="d", input_from=2)))
    assert plan.waves() == [[0, 1], [2], [3]]


def test_values_are_immutable():
    with pytest.raises(ValidationError):
        _plan().steps[0].instruction = "other"
