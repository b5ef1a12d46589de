"""The batch function of the server: plan and run many requests' jobs together on one Orchestrator.

`Runner(orc)(jobs)` returns one `Outcome` (or exception) per `Job`, in order. Tasks are planned in one
`planner.plan_many` call, then every plan runs in one `orc.run_plans` call, so steps of the same depth across
all requests share executor batches. A job that cannot be planned, or whose plan is too long, fails alone. A
sampling job with a seed runs alone, after seeding torch, so the same seed gives the same answer.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from orchestrator.integrations.server.config import APIError
from orchestrator.plan import BrickConfig, BrickRef, Decoding, Plan, PlanError, Step
from orchestrator.result import Result

__all__ = ["BatchLock", "Job", "Outcome", "Runner", "parse_brick_key", "supports_seed"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One request's task: plan (`instruction`, `input`), run a given `plan`, or run `bricks` as one step.

    `bricks` are (id, version or None for the active one); `decoding` replaces every step's decoding. `sink`,
    when given, gets the final step's new text as it is written (called from the batch's thread).
    """

    instruction: str = ""
    input: str = ""
    plan: Plan | None = None
    bricks: tuple[tuple[str, int | None], ...] | None = None
    decoding: Decoding | None = None
    seed: int | None = None
    sink: Callable[[str], None] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Outcome:
    """A job's result and its token counts (the executor's tokenizer; characters when it has none)."""

    result: Result
    prompt_tokens: int
    completion_tokens: int
    last_step_tokens: int  # the final step's output, to tell whether it stopped at max_new_tokens

    @property
    def hit_length(self) -> bool:
        """Whether the final step wrote as many tokens as it was allowed (finish_reason "length")."""
        return self.last_step_tokens >= self.result.plan.steps[-1].decoding.max_new_tokens


def parse_brick_key(text: str) -> tuple[str, int | None]:
    """`caesar` -> ("caesar", None); `caesar@2` -> ("caesar", 2). PlanError for a malformed key."""
    brick_id, sep, version = text.strip().partition("@")
    if not brick_id or (sep and not version.isdigit()) or (sep and int(version) < 1):
        raise PlanError(f"brick {text!r} is not a brick id or id@version (e.g. caesar or caesar@1)")
    return brick_id, int(version) if sep else None


def supports_seed(orc) -> bool:
    """Whether seeded sampling is reproducible on this orchestrator's executor (transformers: torch's RNG); an
    engine process's view says it (`seedable`)."""
    seedable = getattr(orc, "seedable", None)
    if seedable is not None:
        return bool(seedable)
    return type(orc.executor).__module__.startswith("orchestrator.executors.transformers")


def _with_decoding(plan: Plan, decoding: Decoding | None) -> Plan:
    if decoding is None:
        return plan
    return plan.model_copy(update={"steps": tuple(s.model_copy(update={"decoding": decoding}) for s in plan.steps)})


class BatchLock:
    """Batches share it (`shared()`); library changes and shutdown hold it alone (`with lock:`, `acquire`)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._sharing = 0
        self._held = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._held)
            self._sharing += 1
        try:
            yield
        finally:
            with self._cond:
                self._sharing -= 1
                self._cond.notify_all()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        with self._cond:
            free = lambda: not self._held and not self._sharing  # noqa: E731
            if not blocking:
                ok = free()
            else:
                ok = self._cond.wait_for(free, None if timeout is None or timeout < 0 else timeout)
            if ok:
                self._held = True
            return ok

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def __enter__(self) -> "BatchLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Runner:
    """Plans and runs batches of jobs on `orc` (an Orchestrator). `concurrent`: whether batches may run at once
    (the executor says so: vLLM's calls share its running batches); they share `lock`, which library changes
    hold alone."""

    def __init__(self, orc, *, max_plan_steps: int = 16) -> None:
        self.orc = orc
        self.max_plan_steps = max_plan_steps
        self.lock = BatchLock()
        self.concurrent = bool(getattr(getattr(orc, "executor", None), "concurrent", False))

    # -- plans ------------------------------------------------------------------------------------------
    def _brick_plans(self, jobs: Sequence[Job]) -> dict[int, Plan | Exception]:
        """One-step plans for the jobs that name their bricks; the model sees the brick's trained phrasing
        nearest to the instruction when the library asks for canonical phrasings."""
        planner = self.orc.planner
        out: dict[int, Plan | Exception] = {}
        todo = [i for i, j in enumerate(jobs) if j.bricks is not None and j.plan is None]
        canonical = bool(getattr(planner, "canonical", False)) and getattr(planner, "index", None) is not None
        hits = []
        if canonical and todo:
            nearest = getattr(planner, "nearest", None) or planner.index.search_many
            hits = nearest([jobs[i].instruction for i in todo], 16)
        threshold = getattr(planner.routing, "threshold", 0.5)
        for n, i in enumerate(todo):
            job = jobs[i]
            try:
                found = []
                for brick_id, version in job.bricks or ():
                    try:
                        found.append(planner.library.get(brick_id, version))
                    except KeyError as e:
                        raise APIError(404, f"unknown brick: {e.args[0] if e.args else brick_id}",
                                       code="model_not_found", param="model") from None
                refs = tuple(BrickRef(id=b.id, version=b.version, kind=b.kind) for b in found)
                n_lora = sum(r.role == "adapter" for r in refs)
                comp = planner.composition
                config = (BrickConfig(bricks=refs, merge=comp.merge, density=comp.density, mask_merge=comp.mask_merge)
                          if n_lora > 1 else BrickConfig(bricks=refs, mask_merge=comp.mask_merge))
                shown = None
                if len(found) == 1 and hits:
                    examples = found[0].manifest.examples
                    best = next((h for h in hits[n] if h.key.partition("@")[0] == found[0].id), None)
                    if best is not None and best.score >= threshold and best.text in examples:
                        shown = best.text if best.text != job.instruction else None
                template = found[0].manifest.prompt_template if len(found) == 1 else None
                step = Step(instruction=job.instruction, config=config, decoding=planner.decoding,
                            prompt_template=template, model_instruction=shown,
                            route="asked for: " + ", ".join(r.key for r in refs))
                out[i] = Plan(instruction=job.instruction, input=job.input, steps=(step,))
            except Exception as e:  # noqa: BLE001 (this job's error)
                out[i] = e
        return out

    def _plans(self, jobs: Sequence[Job]) -> list[Plan | Exception]:
        plans: list[Plan | Exception | None] = [j.plan for j in jobs]
        for i, plan in self._brick_plans(jobs).items():
            plans[i] = plan
        todo = [i for i, p in enumerate(plans) if p is None]
        if todo:
            planner = self.orc.planner
            try:
                for i, plan in zip(todo, planner.plan_many([(jobs[i].instruction, jobs[i].input) for i in todo])):
                    plans[i] = plan
            except Exception:  # noqa: BLE001 (plan one by one: each job keeps its own error)
                for i in todo:
                    try:
                        plans[i] = planner.plan(jobs[i].instruction, jobs[i].input)
                    except Exception as e:  # noqa: BLE001
                        plans[i] = e
        out: list[Plan | Exception] = []
        for job, plan in zip(jobs, plans):
            if isinstance(plan, Plan) and len(plan.steps) > self.max_plan_steps:
                plan = PlanError(f"the plan has {len(plan.steps)} steps, more than this server's maximum of "
                                 f"{self.max_plan_steps}")
            out.append(_with_decoding(plan, job.decoding) if isinstance(plan, Plan) else plan)  # type: ignore[arg-type]
        return out

    # -- running ----------------------------------------------------------------------------------------
    @staticmethod
    def _on_delta(plans: Sequence[Plan], sinks: Sequence[Callable[[str], None] | None]):
        """run_plans' delta callback: each plan's final step goes to its job's sink; None when no job streams."""
        if not any(sinks):
            return None

        def on_delta(pi: int, si: int, text: str) -> None:
            sink = sinks[pi]
            if sink is not None and si == len(plans[pi].steps) - 1:
                try:
                    sink(text)
                except Exception:  # noqa: BLE001 (a listener that went away must not fail the batch)
                    log.debug("a stream's sink failed", exc_info=True)

        return on_delta

    def _run(self, plans: list[Plan], sinks: Sequence[Callable[[str], None] | None] = (),
             gone: Callable[[int], bool] | None = None,
             ended: Callable[[list[tuple[int, Result]]], None] | None = None) -> list[Result | Exception | None]:
        """Run `plans` together (`ended` gets each wave's finished plans); if that fails, each alone, except those
        `ended` already got (None in their place)."""
        answered: set[int] = set()  # plans `ended` already got

        def on_results(wave: list[tuple[int, Result]]) -> None:
            ended(wave)  # type: ignore[misc]
            answered.update(k for k, _ in wave)

        extra = {k: v for k, v in (("on_delta", self._on_delta(plans, sinks)), ("cancelled", gone),
                                   ("on_results", on_results if ended is not None else None)) if v is not None}
        try:
            return list(self.orc.run_plans(plans, **extra))
        except Exception:  # noqa: BLE001 (run each alone so that each gets its own error)
            if len(plans) == 1:
                raise
            log.warning("a shared run of %d plans failed; running each alone", len(plans), exc_info=True)
        out: list[Result | Exception | None] = []
        for i, plan in enumerate(plans):
            if i in answered:  # its result already went out: not run again
                out.append(None)
                continue
            try:
                alone = {} if gone is None else {"cancelled": lambda _, i=i: gone(i)}
                out.append(self.orc.run_plans([plan], **alone)[0])
            except Exception as e:  # noqa: BLE001
                out.append(e)
        return out

    def _run_seeded(self, plan: Plan, seed: int, sink=None, gone: Callable[[], bool] | None = None
                    ) -> Result | Exception:
        import torch

        extra = {k: v for k, v in (("on_delta", self._on_delta([plan], [sink])),
                                   ("cancelled", None if gone is None else (lambda _: gone()))) if v is not None}
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self.orc.run_plans([plan], **extra)[0]
        except Exception as e:  # noqa: BLE001
            return e

    def __call__(self, jobs: Sequence[Job], gone: Callable[[int], bool] | None = None,
                 done: Callable[[int, Outcome], None] | None = None) -> list[Outcome | Exception]:
        """Plan and run `jobs` together; one Outcome or exception per job, in order. Once `gone(i)` is true (job
        i's caller went away), job i's plan runs no further and its running step stops where the executor can
        stop it. `done(i, outcome)` gets job i's outcome as soon as its plan ends, before longer plans do."""
        self._follow_library()
        early: dict[int, Outcome] = {}
        with self.lock.shared():
            plans = self._plans(jobs)
            results: list[Result | Exception | None] = [p if isinstance(p, Exception) else None for p in plans]
            shared = [i for i, p in enumerate(plans) if isinstance(p, Plan) and not self._seeded(jobs[i], p)]
            shared_gone = None if gone is None else (lambda k: gone(shared[k]))

            def ended(wave: list[tuple[int, Result]]) -> None:  # one tokenizer call for the wave's token counts
                for (k, _), outcome in zip(wave, self._outcomes([result for _, result in wave])):
                    early[shared[k]] = outcome  # type: ignore[assignment]
                    done(shared[k], outcome)  # type: ignore[misc]

            ran = (self._run([plans[i] for i in shared], [jobs[i].sink for i in shared], shared_gone,  # type: ignore[misc]
                             ended if done is not None else None) if shared else [])
            for i, result in zip(shared, ran):
                results[i] = result
            for i, plan in enumerate(plans):
                if results[i] is None and isinstance(plan, Plan):
                    results[i] = self._run_seeded(plan, jobs[i].seed, jobs[i].sink,  # type: ignore[arg-type]
                                                  None if gone is None else (lambda i=i: gone(i)))
            rest = [i for i in range(len(jobs)) if i not in early]
            out: list[Outcome | Exception | None] = [early.get(i) for i in range(len(jobs))]
            for i, outcome in zip(rest, self._outcomes([results[i] for i in rest])):  # type: ignore[misc]
                out[i] = outcome
            return out  # type: ignore[return-value]

    def _follow_library(self) -> None:
        """Pick up bricks changed on disk, holding the lock alone (no batch running)."""
        stale = getattr(self.orc, "library_stale", None)
        if stale is None or stale():
            with self.lock:
                follow = getattr(self.orc, "follow_library", None)
                if follow is not None:
                    try:
                        follow()
                    except Exception:  # noqa: BLE001 (serve with the library as it was)
                        log.warning("could not follow the library's changes", exc_info=True)

    @staticmethod
    def _seeded(job: Job, plan: Plan) -> bool:
        return job.seed is not None and any(s.decoding.temperature > 0 for s in plan.steps)

    # -- usage ------------------------------------------------------------------------------------------
    def _counts(self, texts: list[str]) -> list[int]:
        """Token counts of `texts` in one tokenizer call (characters when the executor has no tokenizer)."""
        tokenizer = getattr(self.orc.executor, "tokenizer", None)
        if tokenizer is None or not texts:
            return [len(t) for t in texts]
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False).input_ids]

    def _outcomes(self, results: list[Result | Exception]) -> list[Outcome | Exception]:
        """Each result's token counts, as the executor reported them (`StepTrace.prompt_tokens`,
        `output_tokens`); what it did not report is tokenized here (prompts rendered again), in one call."""
        render = getattr(self.orc, "render", None)
        texts: list[str] = []
        for r in results:
            if isinstance(r, Exception):
                continue
            done = [s for s in r.steps if s.error is None]
            texts += [render(r.plan, s.index, s.input) if render else s.input
                      for s in done if s.prompt_tokens is None]
            texts += [s.output for s in done if s.output_tokens is None]
        counted = iter(self._counts(texts))
        out: list[Outcome | Exception] = []
        for r in results:
            if isinstance(r, Exception):
                out.append(r)
                continue
            done = [s for s in r.steps if s.error is None]
            read = [s.prompt_tokens if s.prompt_tokens is not None else next(counted) for s in done]
            written = [s.output_tokens if s.output_tokens is not None else next(counted) for s in done]
            last = written[-1] if done and r.steps[-1].error is None else 0
            out.append(Outcome(result=r, prompt_tokens=sum(read), completion_tokens=sum(written),
                               last_step_tokens=last))
        return out
