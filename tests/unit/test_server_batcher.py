"""The server's micro-batcher and runner with fakes: batches form, order is kept, one failing task fails only
itself, a full queue refuses at once (429 with Retry-After), and a job whose caller went away is never run."""

import asyncio
import threading
from types import SimpleNamespace

import pytest

from orchestrator.integrations.server.batcher import MicroBatcher
from orchestrator.integrations.server.config import APIError, Overloaded
from orchestrator.integrations.server.runner import Job, Runner, parse_brick_key
from orchestrator.plan import Decoding, Plan, PlanError, Step
from orchestrator.result import Result, StepTrace
from policies import Composition


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_batches_form_and_keep_order():
    calls = []

    def process(jobs):
        calls.append(list(jobs))
        return [j * 10 for j in jobs]

    async def main():
        b = MicroBatcher(process, max_batch=4, wait_ms=50, max_queue=64)
        await b.start()
        try:
            return await asyncio.gather(*(b.submit(i) for i in range(10))), b.stats
        finally:
            await b.stop()

    results, stats = run(main())
    assert results == [i * 10 for i in range(10)]
    assert [len(c) for c in calls] == [4, 4, 2]
    assert [j for c in calls for j in c] == list(range(10))
    assert stats.batches == 3 and stats.largest == 4


def test_a_lone_request_waits_at_most_batch_wait():
    async def main():
        b = MicroBatcher(lambda jobs: jobs, max_batch=32, wait_ms=5, max_queue=8)
        await b.start()
        try:
            t0 = asyncio.get_running_loop().time()
            assert await b.submit("x") == "x"
            return asyncio.get_running_loop().time() - t0
        finally:
            await b.stop()

    assert run(main()) < 1.0


def test_a_failing_task_fails_only_itself():
    def process(jobs):
        return [ValueError(f"bad {j}") if j == "bad" else j.upper() for j in jobs]

    async def main():
        b = MicroBatcher(process, max_batch=8, wait_ms=20)
        await b.start()
        try:
            return await asyncio.gather(*(b.submit(j) for j in ["a", "bad", "c"]), return_exceptions=True)
        finally:
            await b.stop()

    a, bad, c = run(main())
    assert (a, c) == ("A", "C")
    assert isinstance(bad, ValueError) and "bad bad" in str(bad)


def test_a_batch_function_that_raises_fails_its_batch_and_the_loop_goes_on():
    state = {"n": 0}

    def process(jobs):
        state["n"] += 1
        if state["n"] == 1:
            raise RuntimeError("boom")
        return jobs

    async def main():
        b = MicroBatcher(process, max_batch=8, wait_ms=0)
        await b.start()
        try:
            first = await asyncio.gather(b.submit(1), return_exceptions=True)
            return first, await b.submit(2)
        finally:
            await b.stop()

    first, second = run(main())
    assert isinstance(first[0], RuntimeError) and second == 2


def _blocking():
    """A batch function that blocks until released, recording what it ran."""
    gate, started, seen = threading.Event(), threading.Event(), []

    def process(jobs):
        seen.append(list(jobs))
        started.set()
        gate.wait(5)
        return jobs

    return process, gate, started, seen


def test_a_full_queue_refuses_at_once_with_retry_after():
    process, gate, started, seen = _blocking()

    async def main():
        b = MicroBatcher(process, max_batch=1, wait_ms=0, max_queue=2)
        await b.start()
        try:
            running = asyncio.ensure_future(b.submit("running"))
            await asyncio.to_thread(started.wait, 5)
            queued = [asyncio.ensure_future(b.submit(f"q{i}")) for i in range(2)]
            await asyncio.sleep(0)
            with pytest.raises(Overloaded) as refused:
                b.enqueue("one too many")
            gate.set()
            return refused.value, await asyncio.gather(running, *queued)
        finally:
            gate.set()
            await b.stop()

    error, results = run(main())
    assert error.status == 429 and int(error.headers["Retry-After"]) >= 1
    assert error.body()["error"]["type"] == "rate_limit_error"
    assert results == ["running", "q0", "q1"]


def test_a_job_whose_caller_went_away_is_never_run():
    process, gate, started, seen = _blocking()

    async def main():
        b = MicroBatcher(process, max_batch=8, wait_ms=0)
        await b.start()
        try:
            first = asyncio.ensure_future(b.submit("first"))
            await asyncio.to_thread(started.wait, 5)
            gone = asyncio.ensure_future(b.submit("gone"))
            kept = asyncio.ensure_future(b.submit("kept"))
            await asyncio.sleep(0.01)
            gone.cancel()  # the HTTP handler's wait is cancelled when its client disconnects
            gate.set()
            return await first, await kept, b.stats
        finally:
            gate.set()
            await b.stop()

    first, kept, stats = run(main())
    assert (first, kept) == ("first", "kept")
    assert seen == [["first"], ["kept"]] and stats.dropped == 1


def test_stop_fails_waiting_jobs_with_503():
    process, gate, started, _ = _blocking()

    async def main():
        b = MicroBatcher(process, max_batch=1, wait_ms=0)
        await b.start()
        running = asyncio.ensure_future(b.submit("running"))
        await asyncio.to_thread(started.wait, 5)
        waiting = b.enqueue("waiting")
        stop = asyncio.ensure_future(b.stop())
        await asyncio.sleep(0.05)
        gate.set()
        await stop
        running.cancel()
        return waiting

    waiting = run(main())
    assert isinstance(waiting.exception(), APIError) and waiting.exception().status == 503


# -- the runner, on a fake orchestrator ---------------------------------------------------------------------
def _plan(instruction, text, steps=1):
    return Plan(instruction=instruction, input=text,
                steps=tuple(Step(instruction=f"{instruction} #{i}", input_from=i - 1 if i else None)
                            for i in range(steps)))


class FakePlanner:
    decoding = Decoding()
    composition = Composition()
    canonical = False
    index = None
    routing = SimpleNamespace(threshold=0.5)

    def __init__(self):
        self.library = SimpleNamespace(get=self._get)
        self.calls = []

    @staticmethod
    def _get(brick_id, version=None):
        if brick_id != "caesar":
            raise KeyError(f"no brick {brick_id!r}")
        return SimpleNamespace(id="caesar", version=version or 1, kind="lora",
                               manifest=SimpleNamespace(examples=[], prompt_template=None))

    def plan_many(self, tasks):
        self.calls.append(list(tasks))
        if any(i == "unplannable" for i, _ in tasks):
            raise PlanError("cannot plan 'unplannable'")
        return [self.plan(i, x) for i, x in tasks]

    def plan(self, instruction, text):
        if instruction == "unplannable":
            raise PlanError("cannot plan 'unplannable'")
        return _plan(instruction, text, steps=20 if instruction == "long" else 1)


class FakeOrchestrator:
    def __init__(self):
        self.planner = FakePlanner()
        self.executor = SimpleNamespace()
        self.runs = []

    def run_plans(self, plans):
        self.runs.append(list(plans))
        out = []
        for p in plans:
            steps = tuple(StepTrace(index=i, instruction=s.instruction, input=p.input, output=p.input[::-1],
                                    bricks=s.config.bricks, route=None, timings_ms={}) for i, s in enumerate(p.steps))
            out.append(Result(instruction=p.instruction, input=p.input, output=p.input[::-1], plan=p, steps=steps,
                              timings_ms={}))
        return out


def test_runner_plans_and_runs_a_batch_together_and_keeps_order():
    orc = FakeOrchestrator()
    outcomes = Runner(orc)([Job(instruction=f"task {i}", input=f"in{i}") for i in range(5)])
    assert [o.result.output for o in outcomes] == [f"in{i}"[::-1] for i in range(5)]
    assert len(orc.planner.calls) == 1 and len(orc.runs) == 1 and len(orc.runs[0]) == 5
    assert outcomes[0].completion_tokens == 3  # no tokenizer: characters


def test_runner_a_task_that_cannot_be_planned_fails_alone():
    orc = FakeOrchestrator()
    out = Runner(orc)([Job(instruction="a", input="xy"), Job(instruction="unplannable"),
                       Job(instruction="long", input="z"), Job(instruction="b", input="uv")])
    assert out[0].result.output == "yx" and out[3].result.output == "vu"
    assert isinstance(out[1], PlanError)
    assert isinstance(out[2], PlanError) and "20 steps" in str(out[2])
    assert len(orc.runs) == 1 and len(orc.runs[0]) == 2  # the good ones still share one run


def test_runner_applies_decoding_and_builds_brick_plans():
    orc = FakeOrchestrator()
    decoding = Decoding(max_new_tokens=7, temperature=0.0)
    out = Runner(orc)([Job(instruction="Shift.", input="abc", bricks=(("caesar", None),), decoding=decoding),
                       Job(instruction="Shift.", input="abc", bricks=(("nope", None),))])
    plan = out[0].result.plan
    assert [b.key for b in plan.steps[0].config.bricks] == ["caesar@1"]
    assert plan.steps[0].decoding.max_new_tokens == 7
    assert isinstance(out[1], APIError) and out[1].status == 404
    assert orc.planner.calls == []  # brick jobs are not planned


def test_parse_brick_key():
    assert parse_brick_key("caesar") == ("caesar", None)
    assert parse_brick_key("caesar@2") == ("caesar", 2)
    for bad in ("", "@1", "caesar@", "caesar@x", "caesar@0"):
        with pytest.raises(PlanError):
            parse_brick_key(bad)


def test_importing_the_server_without_its_extra_names_the_extra():
    import subprocess
    import sys

    code = ("import sys; sys.modules['fastapi'] = None\n"
            "from bricks.errors import MissingExtraError\n"
            "try:\n    from orchestrator.integrations.server import create_app\n"
            "except MissingExtraError as e:\n    print('MISSING', e)\n"
            "import orchestrator, orchestrator.cli\n"
            "print('LIGHT', 'uvicorn' not in sys.modules and 'prometheus_client' not in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert "MISSING" in out and "brickwork[serve]" in out
    assert "LIGHT True" in out


def test_a_lone_caller_does_not_wait_but_returning_callers_are_waited_for():
    calls = []

    def process(jobs):
        calls.append(list(jobs))
        return jobs

    async def main():
        b = MicroBatcher(process, max_batch=8, wait_ms=2000, max_queue=8)
        await b.start()
        loop = asyncio.get_running_loop()
        try:
            t0 = loop.time()
            for i in range(3):  # one caller, one job after another: each runs at once, not after wait_ms
                await b.submit(f"lone{i}")
            lone_s = loop.time() - t0
            await asyncio.gather(b.submit("a"), b.submit("b"))  # two callers: a batch of 2 ...

            async def later(job, delay):
                await asyncio.sleep(delay)
                return await b.submit(job)

            t0 = loop.time()
            await asyncio.gather(later("c", 0.0), later("d", 0.2))  # ... so the next batch waits for the second caller
            return lone_s, loop.time() - t0
        finally:
            await b.stop()

    lone_s, pair_s = run(main())
    assert lone_s < 1.0 and [len(c) for c in calls[:3]] == [1, 1, 1]
    assert calls[-1] == ["c", "d"] and pair_s < 1.5


def test_batches_run_concurrently_up_to_max_concurrent():
    """With max_concurrent=2, a second batch starts while the first still runs (its process waits for it); a
    third waits for a slot."""
    started = threading.Semaphore(0)
    both_in = threading.Event()
    running, peak = [0], [0]
    lock = threading.Lock()

    def process(jobs):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            if running[0] == 2:
                both_in.set()
        started.release()
        assert both_in.wait(5), "the second batch never started while the first ran"
        with lock:
            running[0] -= 1
        return jobs

    async def main():
        b = MicroBatcher(process, max_batch=2, wait_ms=0, max_queue=64, max_concurrent=2)
        await b.start()
        try:
            return await asyncio.gather(*(b.submit(i) for i in range(6)))
        finally:
            await b.stop()

    assert run(main()) == list(range(6))
    assert peak[0] == 2
    with pytest.raises(ValueError, match="max_concurrent 0 must be >= 1"):
        MicroBatcher(process, max_concurrent=0)


def test_batch_lock_is_shared_by_batches_and_held_alone_by_changes():
    from orchestrator.integrations.server.runner import BatchLock

    lock = BatchLock()
    with lock.shared():
        with lock.shared():  # batches run side by side
            assert not lock.acquire(blocking=False)  # a library change waits for them
        assert not lock.acquire(timeout=0.05)
    assert lock.acquire(timeout=1)
    order = []
    t = threading.Thread(target=lambda: (lock.shared().__enter__(), order.append("batch")))
    t.start()
    t.join(0.1)
    assert order == []  # a batch waits while a change holds the lock
    order.append("change done")
    lock.release()
    t.join(5)
    assert order == ["change done", "batch"]


def test_the_server_leaves_one_core_to_its_event_loop(monkeypatch):
    import os

    from orchestrator.integrations.server.config import ServerConfig

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert ServerConfig().threads() == 3 and ServerConfig(torch_threads=2).threads() == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert ServerConfig().threads() == 1  # never fewer than one
    with pytest.raises(ValueError, match="torch_threads"):
        ServerConfig(torch_threads=0)


def test_the_server_freezes_long_lived_objects_before_serving_and_after_its_first_batches(monkeypatch):
    import gc

    from orchestrator.integrations.server.gc_freeze import WarmFreeze

    calls = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("collect") or 0)
    monkeypatch.setattr(gc, "unfreeze", lambda: calls.append("unfreeze"))
    monkeypatch.setattr(gc, "get_freeze_count", lambda: 7)
    freezer = WarmFreeze(after_batches=3)
    freezer.start()
    for _ in range(5):
        freezer.batch_done()
    freezer.stop()
    assert calls == ["collect", "freeze", "collect", "freeze", "unfreeze"]  # garbage freed first, never frozen
    calls.clear()
    once = WarmFreeze(after_batches=0)
    once.start()
    once.batch_done()
    assert calls == ["collect", "freeze"]


def test_runner_counts_the_tokens_the_model_wrote_where_the_executor_says():
    class Writing(FakeOrchestrator):  # the executor says each step read 11 tokens and wrote 7 (3 characters)
        def run_plans(self, plans):
            said = {"output_tokens": 7, "prompt_tokens": 11}
            return [r.model_copy(update={"steps": tuple(s.model_copy(update=said) for s in r.steps)})
                    for r in super().run_plans(plans)]

    plan = _plan("task", "abc", steps=1)
    said = Runner(Writing())([Job(plan=plan.model_copy(update={"steps": tuple(
        s.model_copy(update={"decoding": Decoding(max_new_tokens=7)}) for s in plan.steps)}))])[0]
    assert said.completion_tokens == 7 and said.last_step_tokens == 7 and said.hit_length  # cut at max_new_tokens
    assert said.prompt_tokens == 11
    counted = Runner(FakeOrchestrator())([Job(instruction="task", input="abc")])[0]
    assert counted.completion_tokens == 3 and not counted.hit_length  # not said: the text is counted
    assert counted.prompt_tokens == 3  # no render, no tokenizer: the step's input in characters


def test_a_caller_answered_early_and_back_before_its_batch_ended_is_not_waited_for_twice():
    resubmitted = threading.Event()
    calls = []

    def process(jobs, done):
        calls.append(list(jobs))
        if jobs == ["first"]:
            done(0, "first!")  # answered early: the caller sends its next job while this batch still runs
            assert resubmitted.wait(5)
        return [j + "!" for j in jobs]

    async def main():
        b = MicroBatcher(process, max_batch=8, wait_ms=2000, max_queue=8, early_results=True)
        await b.start()
        loop = asyncio.get_running_loop()
        try:
            first = await b.submit("first")
            second = b.enqueue("second")
            resubmitted.set()
            t0 = loop.time()
            return first, await second, loop.time() - t0
        finally:
            await b.stop()

    first, second, second_s = run(main())
    assert (first, second) == ("first!", "second!")
    assert second_s < 1.0  # one caller: its next job is not held for wait_ms waiting for a second one
    assert calls == [["first"], ["second"]]
