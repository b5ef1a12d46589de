"""The Python API: `Orchestrator.from_pretrained(...)`, then `plan`, `run`, `run_plan` and `run_batch`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from bricks.errors import ConfigError
from bricks.prompt import DEFAULT_TEMPLATE, PromptFormat, PromptTemplate, choose_template
from orchestrator.executors.base import Executor, GenerationRequest, group_requests
from orchestrator.library_index import library_stamp, open_index
from orchestrator.plan import Decoding, Plan
from orchestrator.planner import Planner
from orchestrator.result import Result
from orchestrator.validation import InputError
from policies import Composition

__all__ = ["Orchestrator", "make_decomposer"]

log = logging.getLogger(__name__)

StepDelta = Callable[[int, int, str], None]  # (plan index, step index, new text)


def make_decomposer(spec, engine=None):
    """A Decomposer from a name: "rules", "single", "model" (the engine's base model) or "model:PATH"."""
    from policies import ModelDecomposer, RuleDecomposer, SingleStep

    if spec is None or spec == "rules":
        return RuleDecomposer()
    if not isinstance(spec, str):
        return spec
    if spec == "single":
        return SingleStep()
    if spec == "model":
        if engine is None or not hasattr(engine, "complete_constrained"):
            raise ConfigError("decomposer 'model' needs an executor with constrained decoding (transformers or vllm)")
        many = getattr(engine, "complete_constrained_many", None)
        return ModelDecomposer(lm=engine.complete_constrained, lm_many=many)
    if spec.startswith("model:"):
        many = _planner_model(Path(spec[len("model:"):]), getattr(engine, "device", "auto"))
        return ModelDecomposer(lm=lambda prompt, grammar: many([prompt], grammar)[0], lm_many=many)
    raise ConfigError(f"unknown decomposer {spec!r}; expected rules, single, model or model:PATH")


def _planner_model(folder: Path, device: str = "auto"):
    from bricks.constrained import generate_grammar, grammar_ebnf
    from bricks.model_io import load_model, load_tokenizer

    model, tokenizer = load_model(folder, device=device), load_tokenizer(folder)  # beside the executor's model
    return lambda prompts, grammar: generate_grammar(model, tokenizer, prompts, grammar_ebnf(grammar))


class Orchestrator:
    """A base model plus a brick library, planned by a Planner and run by an Executor."""

    def __init__(self, planner: Planner, executor: Executor, *, template: PromptTemplate = DEFAULT_TEMPLATE,
                 model_dir: Path | None = None) -> None:
        self.planner = planner
        self.executor = executor
        self.template = template
        self.model_dir = model_dir
        self._reload_lock = threading.Lock()
        self._library_stamp = library_stamp(planner.library)

    @classmethod
    def from_pretrained(cls, model: str | Path | None = None, library: str | Path | None = None,
                        executor: str = "transformers", *, embedder=None, routing=None, decomposer=None,
                        decoding: Decoding = Decoding(), template: PromptTemplate = DEFAULT_TEMPLATE,
                        composition=None, **executor_options) -> "Orchestrator":
        """Open a model folder and a library (None for either: the toy world's) and start an executor.

        `executor` is "transformers" (default) or "vllm" (`VllmExecutor`: one vLLM engine, multi-LoRA and
        per-request FFN masks in mixed batches); `executor_options` go to its constructor (transformers:
        `device="auto"` (a GPU when torch sees one) | "cpu" | "cuda" | "cuda:N", `device_map="auto"` for a model
        too large for one GPU, `dtype`, `batch_size`, ...). `decomposer` is a Decomposer, or "rules" (default),
        "single", "model" (the base model writes the steps
        as constrained JSON, rules as fallback) or "model:PATH" (a planner model folder does). `composition`
        (policies.Composition) says how steps routed to several bricks merge them. A model whose fingerprint is not
        the library's base model's is refused (IncompatibleBrickError naming both) before anything is loaded.
        """
        from bricks.fingerprint import check_base_model
        from orchestrator.factory import model_dir as resolve_model
        from orchestrator.factory import open_library

        model_dir = resolve_model(model)
        lib = open_library(library)
        check_base_model(model_dir, lib.base_model, lib.path)  # another model: one line, before any brick loads
        if embedder is None:
            from index import SentenceTransformerEmbedder

            embedder = SentenceTransformerEmbedder()
        index = open_index(lib, embedder)
        if executor == "transformers":
            from orchestrator.executors.transformers import TransformersExecutor

            engine: Executor = TransformersExecutor(model_dir, lib, **executor_options)
        elif executor == "vllm":
            from orchestrator.executors.vllm.executor import VllmExecutor

            engine = VllmExecutor(model_dir, lib, **executor_options)
        else:
            raise ConfigError(f"unknown executor {executor!r}; expected 'transformers' or 'vllm'")
        if routing is None:
            from orchestrator.calibrate import calibrated_routing

            routing = calibrated_routing(lib.path)
        planner = Planner(lib, index, routing=routing, decomposer=make_decomposer(decomposer, engine),
                          decoding=decoding, composition=composition or Composition())
        from orchestrator.lifecycle import exclude_misfits

        exclude_misfits(planner, engine.model_config)
        return cls(planner, engine, template=template, model_dir=model_dir)

    # -- planning ---------------------------------------------------------------------------------------
    def plan(self, instruction: object, input: object = None, *, history: object = None) -> Plan:
        """The plan for one instruction, without running it; `history` (earlier messages) is kept in it."""
        self.follow_library()
        return self.planner.plan(instruction, input, history)

    # -- running ----------------------------------------------------------------------------------------
    def run(self, instruction: object, input: object = None, *, history: object = None) -> Result:
        """Plan and run one instruction.

        `history`: the conversation before it (`bricks.prompt.Message`s, {"role", "content"} mappings or
        (role, content) pairs, oldest first). Only the instruction is planned; every step's prompt carries the
        history as context (see `bricks.prompt`: earlier messages for a chat template, `{history}` in a raw one,
        ignored by a raw template without that field).
        """
        t0 = time.perf_counter()
        plan = self.plan(instruction, input, history=history)
        plan_ms = (time.perf_counter() - t0) * 1000
        return self._run_plans([plan], [plan_ms])[0]

    def run_plan(self, plan: Plan) -> Result:
        """Run a given plan (e.g. one read back with `Plan.from_json`)."""
        self.follow_library()
        return self._run_plans([plan], [0.0])[0]

    def run_plans(self, plans: Sequence[Plan], *, on_delta: StepDelta | None = None,
                  cancelled: Callable[[int], bool] | None = None,
                  on_results: Callable[[list[tuple[int, Result]]], None] | None = None) -> list[Result]:
        """Run given plans together: steps of the same depth across all plans share batches.

        `on_delta(plan_index, step_index, text)`, when given, gets each step's new text as the executor writes
        it (before the step's output is stripped of surrounding white space). Once `cancelled(plan_index)` is
        true (the plan's caller went away), the plan runs no further step, its running step stops where the
        executor can stop it (`cancellable` executors), and its result fails with CANCELLED. After each wave,
        `on_results([(plan_index, result), ...])` gets the plans that ended in it, before longer plans end."""
        return self._run_plans(list(plans), [0.0] * len(plans), on_delta, cancelled, on_results)

    def run_batch(self, rows: Iterable[Mapping | Sequence | str]) -> list[Result]:
        """Plan and run many tasks together: steps of the same depth across all tasks share batches.

        Each row is a mapping with `instruction` (and optional `input` and `history`, as in `run`), an
        (instruction, input) pair, or a bare instruction.
        """
        tasks: list[tuple] = []
        for row in rows:
            if isinstance(row, Mapping):
                tasks.append((row.get("instruction"), row.get("input"), row.get("history")))
            elif isinstance(row, (str, bytes)):
                tasks.append((row, None))
            else:
                tasks.append((row[0], row[1] if len(row) > 1 else None))
        t0 = time.perf_counter()
        self.follow_library()
        plans = self.planner.plan_many(tasks)
        per_plan_ms = (time.perf_counter() - t0) * 1000 / max(1, len(plans))
        return self._run_plans(plans, [per_plan_ms] * len(plans))

    prompt_format: PromptFormat | None = None  # for steps that do not say: "raw", "chat"; None: chat if the model has one

    def render(self, plan: Plan, i: int, text: str) -> str:
        """Step i's prompt on input `text`, with the plan's history (`bricks.prompt.choose_template` picks the
        format; an executor without a `tokenizer` gets the raw template)."""
        step = plan.steps[i]
        template = choose_template(step.prompt_format or self.prompt_format, step.prompt_template,
                                   getattr(self.executor, "tokenizer", None), self.template)
        return template.render(step.model_instruction or step.instruction, text, plan.history)

    def _generate_wave(self, requests: list[GenerationRequest], on_delta=None, cancelled=None) -> list[str | Exception]:
        """One executor call; if it fails, each brick configuration is retried alone (not streamed) so one bad
        step fails alone."""
        stop = cancelled if cancelled is not None and getattr(self.executor, "cancellable", False) else None
        try:
            kwargs = {k: v for k, v in (("on_delta", on_delta), ("cancelled", stop)) if v is not None}
            return list(self.executor.generate(requests, **kwargs))
        except Exception as e:  # noqa: BLE001 (isolated below, reported on the failing steps)
            if len(requests) == 1:
                return [e]
            log.warning("a batch of %d requests failed (%s); retrying each brick configuration alone", len(requests), e)
        out: list[str | Exception] = [""] * len(requests)
        for idx in group_requests(requests).values():
            alone = {} if stop is None else {"cancelled": lambda k, idx=idx: stop(idx[k])}
            try:
                texts: list[str | Exception] = list(self.executor.generate([requests[i] for i in idx], **alone))
            except Exception as e:  # noqa: BLE001
                texts = [e] * len(idx)
            for i, text in zip(idx, texts):
                out[i] = text
        return out

    def _generate_checked(self, requests: list[GenerationRequest], on_delta=None, cancelled=None
                          ) -> list[str | Exception]:
        """`_generate_wave` for the requests the executor can take; the others (a prompt longer than the model's
        context) get their own error and are never submitted."""
        prompt_problems = getattr(self.executor, "prompt_problems", None)  # optional in the Executor protocol
        problems = prompt_problems(requests) if prompt_problems and requests else [None] * len(requests)
        out: list[str | Exception] = [InputError(p) if p else "" for p in problems]
        ok = [i for i, p in enumerate(problems) if p is None]
        if ok:
            sink = None if on_delta is None else (lambda j, text: on_delta(ok[j], text))
            stop = None if cancelled is None else (lambda j: cancelled(ok[j]))
            for i, text in zip(ok, self._generate_wave([requests[i] for i in ok], sink, stop)):
                out[i] = text
        return out

    def _run_plans(self, plans: Sequence[Plan], plan_ms: Sequence[float], on_delta: StepDelta | None = None,
                   cancelled: Callable[[int], bool] | None = None,
                   on_results: Callable[[list[tuple[int, Result]]], None] | None = None) -> list[Result]:
        from orchestrator.plan_runs import PlanRuns

        runs = PlanRuns(self)
        ids = [runs.add(plan, ms, on_delta=None if on_delta is None else (lambda si, text, pi=pi: on_delta(pi, si, text)),
                        cancelled=None if cancelled is None else (lambda pi=pi: cancelled(pi)))
               for pi, (plan, ms) in enumerate(zip(plans, plan_ms))]
        results: dict[int, Result] = {}
        index = {rid: pi for pi, rid in enumerate(ids)}
        while runs:
            ended = runs.advance()
            results.update(ended)
            if on_results is not None and ended:
                on_results([(index[rid], result) for rid, result in ended.items()])
        return [results[i] for i in ids]

    # -- lifecycle --------------------------------------------------------------------------------------
    def close(self) -> None:
        self.executor.close()

    def __enter__(self) -> "Orchestrator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- growing and updating the library -----------------------------------------------------------------
    reload_on_change: bool = True  # before planning, pick up bricks another process added, updated or removed

    def library_stale(self) -> bool:
        """Whether the library changed on disk since the last look (and `reload_on_change` is on)."""
        return self.reload_on_change and library_stamp(self.planner.library) != self._library_stamp

    def follow_library(self) -> None:
        """Reload when the library changed on disk since the last look (and `reload_on_change` is on)."""
        if self.library_stale():
            self.reload()

    def reload(self):
        """Re-read the library and make the index and routing follow it; returns a `LibraryChange`.

        Runs by itself before planning when the library changed on disk (`reload_on_change`); call it after
        changing the library behind the orchestrator's back in this process.
        """
        from orchestrator.lifecycle import follow_library

        with self._reload_lock:
            library = self.planner.library
            self._library_stamp = library_stamp(library)
            other = getattr(self.executor, "library", library)
            for lib in (library,) if other is library else (library, other):
                if hasattr(lib, "refresh"):
                    lib.refresh()
            return follow_library(self.planner, model_config=getattr(self.executor, "model_config", None))

    def add_brick(self, source: str | Path):
        """Add the brick folder `source` to the library (a new id) and make it routable at once."""
        brick = self.planner.library.add(Path(source))
        self.reload()
        return brick

    def update_brick(self, source: str | Path):
        """Add the brick folder `source` as a new, active version of an existing id; routing follows at once."""
        brick = self.planner.library.update(Path(source))
        self.reload()
        return brick

    def rollback_brick(self, brick_id: str, to: int | None = None):
        """Make the previous version of a brick (or version `to`) active again; routing follows at once."""
        brick = self.planner.library.rollback(brick_id, to)
        self.reload()
        return brick

    def remove_brick(self, brick_id: str, version: int | None = None) -> None:
        """Remove a brick (every version, or one) from the library and from routing."""
        self.planner.library.remove(brick_id, version)
        self.reload()
