"""Plans in progress, advanced one wave at a time: the next steps of every plan share one executor call.

    runs = PlanRuns(orc)
    a = runs.add(plan_a)                  # a run id
    done = runs.advance()                 # {run id: Result} of the plans that finished in this wave
    b = runs.add(plan_b)                  # joins the next wave, beside plan_a's second step
    while runs:
        done |= runs.advance()

A wave holds, for every run, the steps of its next depth whose input is ready; runs at different depths share it,
so a plan added while others are under way does not wait for them to end. `Orchestrator.run_plans` adds its
plans and advances until none is left.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from bricks.errors import BrickworkError
from orchestrator.executors.base import GenerationRequest
from orchestrator.plan import Plan
from orchestrator.result import CANCELLED, Result, StepTrace

__all__ = ["PlanRuns"]


@dataclass
class _Run:
    plan: Plan
    plan_ms: float
    on_delta: Callable[[int, str], None] | None  # (step index, new text)
    cancelled: Callable[[], bool] | None
    waves: list[list[int]] = field(init=False)
    depth: int = 0
    outputs: list[str | None] = field(init=False)
    written: list[int | None] = field(init=False)  # tokens the model wrote per step, when the executor says
    read: list[int | None] = field(init=False)  # ... and those of each step's prompt
    errors: list[str | None] = field(init=False)
    inputs: list[str] = field(init=False)
    timing: list[dict[str, float]] = field(init=False)
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        n = len(self.plan.steps)
        self.waves = self.plan.waves()
        self.outputs, self.errors, self.inputs = [None] * n, [None] * n, [""] * n
        self.written, self.read = [None] * n, [None] * n
        self.timing = [{} for _ in range(n)]

    @property
    def done(self) -> bool:
        return self.depth >= len(self.waves)

    def gone(self) -> bool:
        return self.cancelled is not None and self.cancelled()

    def result(self) -> Result:
        plan = self.plan
        steps = tuple(
            StepTrace(index=si, instruction=s.instruction, input=self.inputs[si], output=self.outputs[si] or "",
                      bricks=s.config.bricks, route=s.route, timings_ms=self.timing[si], error=self.errors[si],
                      output_tokens=self.written[si], prompt_tokens=self.read[si])
            for si, s in enumerate(plan.steps)
        )
        failed = next((s for s in steps if s.error is not None), None)
        run_ms = (time.perf_counter() - self.started) * 1000
        return Result(instruction=plan.instruction, input=plan.input, output="" if failed else steps[-1].output,
                      plan=plan, steps=steps,
                      timings_ms={"plan_ms": round(self.plan_ms, 3), "run_ms": round(run_ms, 3)},
                      error=f"step {failed.index} failed: {failed.error}" if failed else None)


class PlanRuns:
    """Plans being run on `orc` (an Orchestrator): `add` them, `advance` them a wave at a time."""

    def __init__(self, orc) -> None:
        self.orc = orc
        self._runs: dict[int, _Run] = {}
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self._runs)

    def add(self, plan: Plan, plan_ms: float = 0.0, *, on_delta: Callable[[int, str], None] | None = None,
            cancelled: Callable[[], bool] | None = None) -> int:
        """Start `plan`; returns its run id. `on_delta(step index, text)` gets its steps' new text as it is
        written; once `cancelled()` is true the plan runs no further step (see `Orchestrator.run_plans`)."""
        run_id = next(self._ids)
        self._runs[run_id] = _Run(plan, plan_ms, on_delta, cancelled)
        return run_id

    def advance(self, ids: Iterable[int] | None = None) -> dict[int, Result]:
        """Run the next wave of the given runs (all when None) in one executor call; returns the Result of each
        run that ended, and forgets it."""
        chosen = [i for i in (self._runs if ids is None else ids) if i in self._runs]
        requests: list[GenerationRequest] = []
        runnable: list[tuple[int, int]] = []
        for rid in chosen:
            run = self._runs[rid]
            if run.done:
                continue
            for si in run.waves[run.depth]:
                if self._blocked(run, si):
                    continue
                try:
                    prompt = self.orc.render(run.plan, si, run.inputs[si])
                except BrickworkError as e:  # e.g. a chat template that refuses the messages: this step fails
                    run.errors[si] = f"{type(e).__name__}: {e}"
                    continue
                runnable.append((rid, si))
                requests.append(GenerationRequest(prompt, run.plan.steps[si].config, run.plan.steps[si].decoding))
        if requests:
            self._generate(requests, runnable)
        finished: dict[int, Result] = {}
        for rid in chosen:
            run = self._runs[rid]
            run.depth += 1
            if run.done:
                finished[rid] = self._runs.pop(rid).result()
        return finished

    def _blocked(self, run: _Run, si: int) -> bool:
        """Record why step `si` cannot run (its input failed, its caller went away, it abstains); else set its
        input and return False."""
        step = run.plan.steps[si]
        src = step.input_from
        if src is not None and run.errors[src] is not None:
            run.errors[si] = f"not run: its input, step {src}, failed"
        elif run.gone():
            run.errors[si] = CANCELLED
        elif step.abstain:
            run.errors[si] = f"no brick or base skill serves this step ({step.abstain})"
        else:
            run.inputs[si] = run.plan.input if src is None else (run.outputs[src] or "")
            return False
        return True

    def _generate(self, requests: list[GenerationRequest], runnable: list[tuple[int, int]]) -> None:
        runs = self._runs
        deltas = [runs[rid].on_delta for rid, _ in runnable]
        sink = None
        if any(d is not None for d in deltas):
            def sink(j: int, text: str) -> None:
                if deltas[j] is not None:
                    deltas[j](runnable[j][1], text)
        gone = [runs[rid].cancelled for rid, _ in runnable]
        stop = (lambda j: gone[j] is not None and gone[j]()) if any(g is not None for g in gone) else None
        t = time.perf_counter()
        texts = self.orc._generate_checked(requests, sink, stop)
        wave_ms = (time.perf_counter() - t) * 1000
        for (rid, si), text in zip(runnable, texts):
            run = runs[rid]
            if run.gone():
                run.errors[si] = CANCELLED
            elif isinstance(text, Exception):
                run.errors[si] = f"{type(text).__name__}: {text}".splitlines()[0]
            else:
                run.outputs[si] = text.strip()
                run.written[si] = getattr(text, "tokens", None)  # bricks.generation.GeneratedText
                run.read[si] = getattr(text, "prompt_tokens", None)
            run.timing[si] = {"generate_ms": round(wave_ms, 3), "batch_size": float(len(requests))}

