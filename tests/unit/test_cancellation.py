"""Work whose caller went away stops: the batcher tells its batch function, the Runner passes it on as
`cancelled`, and the Orchestrator runs no further step of that plan and tells executors that can stop a request."""

import asyncio
import threading
from types import SimpleNamespace

from orchestrator.api import Orchestrator
from orchestrator.integrations.server.batcher import MicroBatcher
from orchestrator.integrations.server.runner import Job, Runner
from orchestrator.plan import Plan, Step
from orchestrator.result import CANCELLED


def _plan(word: str) -> Plan:
    return Plan(instruction="x", input=word, steps=(Step(instruction="s0"), Step(instruction="s1", input_from=0),
                                                    Step(instruction="s2", input_from=1)))


class StoppableExecutor:
    """Upper-cases its prompt's input; records each call's prompts and whether it was told who went away."""

    name = "fake"
    model_config = None
    cancellable = True

    def __init__(self, on_call=None):
        self.calls, self.on_call = [], on_call

    def generate(self, requests, cancelled=None):
        self.calls.append(([r.prompt.split("In: ")[1].split("\n")[0] for r in requests], cancelled))
        if self.on_call is not None:
            self.on_call(len(self.calls))
        return ["" if cancelled and cancelled(i) else r.prompt.split("In: ")[1].split("\n")[0].upper() + "!"
                for i, r in enumerate(requests)]

    def close(self):
        pass


def test_a_cancelled_plan_runs_no_further_step():
    gone = set()
    executor = StoppableExecutor(on_call=lambda n: gone.add(1) if n == 1 else None)  # plan 1 leaves during wave 1
    orc = Orchestrator(planner=SimpleNamespace(library=None), executor=executor)
    kept, left = orc.run_plans([_plan("ab"), _plan("cd")], cancelled=gone.__contains__)
    assert kept.error is None and kept.output == "AB!!!"
    assert left.error == f"step 0 failed: {CANCELLED}" and left.steps[0].error == CANCELLED
    assert [prompts for prompts, _ in executor.calls] == [["ab", "cd"], ["AB!"], ["AB!!"]]  # plan 1: one wave only
    assert all(told is not None for _, told in executor.calls)
    assert executor.calls[0][1](1) and not executor.calls[0][1](0)  # the executor saw who went away


def test_an_executor_that_cannot_stop_requests_is_not_told():
    class Plain(StoppableExecutor):
        cancellable = False

        def generate(self, requests):  # no `cancelled` parameter: passing one would fail
            return super().generate(requests)

    orc = Orchestrator(planner=SimpleNamespace(library=None), executor=Plain())
    assert orc.run_plans([_plan("ab")], cancelled=lambda i: False)[0].output == "AB!!!"


def test_the_batcher_tells_the_runner_who_went_away():
    seen = {}
    started, release = threading.Event(), threading.Event()

    class Orc:
        planner = SimpleNamespace(library=None, plan_many=None, routing=None, composition=None)
        executor = None

        def run_plans(self, plans, cancelled=None):
            started.set()
            release.wait(5)
            seen["gone"] = [cancelled(i) for i in range(len(plans))]
            return [SimpleNamespace(error=CANCELLED if cancelled(i) else None) for i in range(len(plans))]

    runner = Runner(Orc())
    runner._outcomes = lambda results: results  # token counts are beside the point here

    async def main():
        b = MicroBatcher(runner, max_batch=8, wait_ms=20, tell_gone=True)
        await b.start()
        try:
            stays = asyncio.ensure_future(b.submit(Job(plan=_plan("ab"))))
            leaves = asyncio.ensure_future(b.submit(Job(plan=_plan("cd"))))
            await asyncio.to_thread(started.wait, 5)
            leaves.cancel()  # its client disconnected while the batch ran
            await asyncio.sleep(0.01)
            release.set()
            return await stays, b.stats
        finally:
            release.set()
            await b.stop()

    result, stats = asyncio.run(asyncio.wait_for(main(), 10))
    assert seen["gone"] == [False, True] and result.error is None and stats.dropped == 1



def test_a_short_plan_is_answered_before_a_longer_one_in_its_batch_ends():
    executor = StoppableExecutor()
    orc = Orchestrator(planner=SimpleNamespace(library=None, routing=None, composition=None), executor=executor)
    runner = Runner(orc)
    runner._outcomes = lambda results: [SimpleNamespace(result=r) for r in results]  # token counts beside the point
    short = Plan(instruction="x", input="ab", steps=(Step(instruction="s0"),))
    answered = {}
    out = runner([Job(plan=_plan("cd")), Job(plan=short)],
                 done=lambda i, outcome: answered.setdefault(i, (len(executor.calls), outcome)))
    assert answered[1][0] == 1 and answered[0][0] == 3  # the short plan after the first executor call, of three
    assert out[1] is answered[1][1] and out[0].result.output == "CD!!!" and out[1].result.output == "AB!"


def test_the_batcher_answers_a_job_before_its_batch_ends():
    release = threading.Event()
    seen = {}

    def process(jobs, done):
        done(0, "first")
        release.wait(5)
        return ["ignored", "second"]

    async def main():
        b = MicroBatcher(process, max_batch=8, wait_ms=20, early_results=True)
        await b.start()
        try:
            first = asyncio.ensure_future(b.submit("a"))
            second = asyncio.ensure_future(b.submit("b"))
            seen["first"] = await asyncio.wait_for(first, 5)  # while the batch still runs
            seen["second_done_then"] = second.done()
            release.set()
            seen["second"] = await second
        finally:
            release.set()
            await b.stop()

    asyncio.run(asyncio.wait_for(main(), 10))
    assert seen == {"first": "first", "second_done_then": False, "second": "second"}


def test_a_plan_answered_early_is_not_run_again_when_the_shared_run_fails():
    executor = StoppableExecutor()
    orc = Orchestrator(planner=SimpleNamespace(library=None, routing=None, composition=None), executor=executor)
    runner = Runner(orc)
    runner._outcomes = lambda results: [SimpleNamespace(result=r) for r in results]
    real = orc.run_plans

    def failing_after_first_wave(plans, **kw):
        if len(plans) == 1:
            return real(plans, **kw)
        on_results = kw.pop("on_results")
        real(plans[1:], on_results=lambda wave: on_results([(1, r) for _, r in wave]))  # the short plan ends...
        raise RuntimeError("the shared run broke")  # ...then the shared run fails

    orc.run_plans = failing_after_first_wave
    short = Plan(instruction="x", input="ab", steps=(Step(instruction="s0"),))
    answered = {}
    out = runner([Job(plan=_plan("cd")), Job(plan=short)], done=lambda i, outcome: answered.setdefault(i, outcome))
    assert set(answered) == {1} and out[1] is answered[1] and out[0].result.output == "CD!!!"
    assert [prompts for prompts, _ in executor.calls].count(["ab"]) == 1  # the short plan ran once, not twice
