"""PlanRuns: plans advance a wave at a time, and a plan added while another is under way shares its next wave."""

from types import SimpleNamespace

from orchestrator.api import Orchestrator
from orchestrator.plan import Plan, Step
from orchestrator.plan_runs import PlanRuns


class UpperExecutor:
    name = "fake"
    model_config = None

    def __init__(self):
        self.calls = []

    def generate(self, requests):
        inputs = [r.prompt.split("In: ")[1].split("\n")[0] for r in requests]
        self.calls.append(inputs)
        return [x.upper() + "!" for x in inputs]

    def close(self):
        pass


def _chain(word, steps):
    return Plan(instruction="x", input=word, steps=tuple(
        Step(instruction=f"s{i}", input_from=None if i == 0 else i - 1) for i in range(steps)))


def test_a_plan_added_later_shares_the_next_wave():
    executor = UpperExecutor()
    runs = PlanRuns(Orchestrator(planner=SimpleNamespace(library=None), executor=executor))
    a = runs.add(_chain("ab", 3))
    assert runs.advance() == {} and executor.calls == [["ab"]]
    b = runs.add(_chain("cd", 1))
    done = runs.advance()
    assert executor.calls[-1] == ["AB!", "cd"]  # a's second step and b's first, in one executor call
    assert set(done) == {b} and done[b].output == "CD!" and len(runs) == 1
    done = runs.advance()
    assert done[a].output == "AB!!!" and [s.output for s in done[a].steps] == ["AB!", "AB!!", "AB!!!"]
    assert len(runs) == 0 and runs.advance() == {}
