"""A plan run one step at a time, for streaming: each finished step's trace as it ends, and the last step's
text as the executor writes it (used by the LangChain chat model's `stream`)."""

from __future__ import annotations

from collections.abc import Generator, Iterator

from orchestrator.plan import Plan
from orchestrator.result import Result, StepTrace

__all__ = ["run_by_step"]


def run_by_step(orc, plan: Plan, stream_last: bool = False) -> Iterator[StepTrace | Result | str]:
    """Run `plan` one step at a time (each as a one-step plan on its input), yielding each finished step's
    trace, then the whole Result (as `Orchestrator.run_plans` would build it; a failed step ends the run). With
    `stream_last`, the last step's new text is yielded (str) as it is written, before its trace."""
    traces: list[StepTrace] = []
    run_ms = 0.0
    for i, step in enumerate(plan.steps):
        text = plan.input if step.input_from is None else traces[step.input_from].output
        one = Plan(instruction=plan.instruction, input=text, history=plan.history,
                   steps=(step.model_copy(update={"input_from": None}),))
        if stream_last and i == len(plan.steps) - 1:
            done = yield from _streamed(orc, one)
        else:
            done = orc.run_plans([one])[0]
        trace = done.steps[0].model_copy(update={"index": i})
        run_ms += done.timings_ms.get("run_ms", 0.0)
        traces.append(trace)
        yield trace
        if trace.error is not None:
            break
    failed = next((t for t in traces if t.error is not None), None)
    traces += [StepTrace(index=i, instruction=s.instruction, input="", output="", bricks=s.config.bricks, route=s.route,
                         timings_ms={}, error=f"not run: step {failed.index} failed")
               for i, s in enumerate(plan.steps) if i >= len(traces)] if failed else []
    yield Result(instruction=plan.instruction, input=plan.input, output="" if failed else traces[-1].output,
                 plan=plan, steps=tuple(traces), timings_ms={"plan_ms": 0.0, "run_ms": round(run_ms, 3)},
                 error=f"step {failed.index} failed: {failed.error}" if failed else None)


def _streamed(orc, plan: Plan) -> Generator[str, None, Result]:
    """Run a one-step plan in a thread, yielding its text as the executor writes it; returns its Result."""
    import queue
    import threading

    events: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            events.put(("done", orc.run_plans([plan], on_delta=lambda pi, si, text: events.put(("text", text)))[0]))
        except BaseException as e:  # noqa: BLE001 (raised again in the caller's thread)
            events.put(("error", e))

    threading.Thread(target=work, name="brickwork-stream", daemon=True).start()
    while True:
        kind, value = events.get()
        if kind == "text":
            yield value
        elif kind == "done":
            return value
        else:
            raise value
