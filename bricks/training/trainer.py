"""Train a LoRA brick for any Hugging Face causal LM and put it into a library (as a new id, or a new version).

The one path behind `brickwork bricks train` / `bricks update --data`: check the rows, the id and the base
model first (before minutes of training), take the LoRA target modules from the model's family (`targets.py`),
train with early stopping on a held-out part (Hugging Face `Trainer`, on the model's device), measure the brick
(and the base model) on that part, write the brick to a temp folder and add it to the library, which copies it
in atomically under its lock.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from bricks.errors import IncompatibleBrickError, LibraryError
from bricks.evaluation import exact_match_by_skill
from bricks.library import Brick, Library
from bricks.manifest import BRICK_ID
from bricks.prompt import DEFAULT_TEMPLATE, PromptTemplate
from bricks.rows import InstructionRow, RowError
from bricks.training.lora import LoraTrainConfig, split_holdout, train_lora
from bricks.training.targets import lora_target_modules

__all__ = ["BrickSpec", "TrainedBrick", "lora_target_modules", "check_training_rows", "check_brick_id", "train_brick"]

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int, float], None]
MAX_EXAMPLES = 8


@dataclass(frozen=True)
class BrickSpec:
    """What a new brick is: its id, what it does, the instructions it serves (default: the rows' own)."""

    id: str
    description: str
    examples: tuple[str, ...] = ()
    skills: tuple[str, ...] = ()
    prompt_template: str | None = None  # None: the library's default wire format


@dataclass(frozen=True)
class TrainedBrick:
    """The brick as added to the library, with what training measured."""

    brick: Brick
    metrics: dict[str, float]
    steps: int
    seconds: float
    history: tuple[tuple[int, float], ...] = field(default=())


def check_training_rows(rows: Sequence[InstructionRow]) -> None:
    """Raise a one-line RowError for no rows, or the first row without an instruction or an output."""
    if not rows:
        raise RowError("no training rows")
    for row in rows:
        if not row.instruction.strip():
            raise RowError(f"training row {row.id!r} has an empty instruction")
        if not row.output.strip():
            raise RowError(f"training row {row.id!r} has no output; every training row needs its expected output")


def _default_examples(rows: Sequence[InstructionRow]) -> tuple[str, ...]:
    """The rows' most frequent instructions: what the index routes to the brick."""
    return tuple(text for text, _ in Counter(r.instruction.strip() for r in rows).most_common(MAX_EXAMPLES))


def _default_skills(rows: Sequence[InstructionRow]) -> tuple[str, ...]:
    kinds = {r.skills for r in rows}
    return next(iter(kinds)) if len(kinds) == 1 else ()


def _accuracy(model, tokenizer, rows: Sequence[InstructionRow], template: PromptTemplate, max_new_tokens: int) -> float:
    if not rows:
        return float("nan")
    scores = exact_match_by_skill(model, tokenizer, [{**r.as_dict(), "skills": ["all"]} for r in rows],
                                  template=template, max_new_tokens=max_new_tokens)
    return round(scores["all"].accuracy, 4)


def check_brick_id(library: Library, brick_id: str, *, update: bool) -> None:
    """Refuse a malformed id, a new brick whose id exists, or an update of an id that does not (one line)."""
    if not BRICK_ID.match(brick_id):
        raise LibraryError(f"brick id {brick_id!r} is not valid; expected [a-z0-9][a-z0-9_.-]* (at most 128 chars)")
    if update and brick_id not in library:
        raise LibraryError(f"no brick {brick_id!r} to update in {str(library.path)!r}; train it as a new brick")
    if not update and brick_id in library:
        raise LibraryError(f"brick id {brick_id!r} already exists in {str(library.path)!r} "
                           f"(version {library.active_version(brick_id)}); use update to train a new version")


def train_brick(model_dir: Path, rows: Sequence[InstructionRow], spec: BrickSpec, library: Library, *,
                cfg: LoraTrainConfig = LoraTrainConfig(), target_modules: Sequence[str] | None = None,
                target_parameters: Sequence[str] = (), update: bool = False, continue_training: bool = False,
                eval_rows: Sequence[InstructionRow] = (), measure_base: bool = True,
                on_step: StepCallback | None = None, device: str | None = "auto") -> TrainedBrick:
    """Train a LoRA brick on `rows` for the model in `model_dir` and add it to `library`.

    `update` makes it a new version of an existing id (the new version becomes active; old ones are kept);
    otherwise an existing id is refused. `continue_training` starts from the active version's adapter.
    `target_modules` None takes `cfg.target_modules`, else the model family's (`lora_target_modules`);
    `target_parameters` are PEFT's (a mixture of experts' `bricks.families.lora_expert_parameters`), none by
    default. It trains on `device` ("auto": a GPU when torch sees one, see `bricks.device`). Metrics stored in the
    manifest: held-out exact match
    of the brick (and of the base model alone), steps, rows, seconds, and exact match on `eval_rows` if given.
    """
    from bricks.device import resolve_device
    from bricks.fingerprint import model_fingerprint
    from bricks.model_io import load_model, load_tokenizer
    from bricks.training.export import write_lora_brick

    device = resolve_device(device)  # a GPU that is not there: one line, before minutes of checks and training
    t0 = time.perf_counter()
    rows = list(rows)
    check_training_rows(rows)
    if eval_rows:
        check_training_rows(eval_rows)
    library.refresh()
    check_brick_id(library, spec.id, update=update)
    if not spec.description.strip():
        raise LibraryError(f"brick {spec.id!r} needs a description (what it does, in one sentence)")
    fingerprint = model_fingerprint(model_dir)
    if fingerprint != library.base_model.fingerprint:
        raise IncompatibleBrickError(f"model {str(model_dir)!r} has fingerprint {fingerprint}, but library "
                                     f"{str(library.path)!r} is built on {library.base_model.name} "
                                     f"{library.base_model.fingerprint}")
    template = PromptTemplate(spec.prompt_template) if spec.prompt_template else DEFAULT_TEMPLATE
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, device=device)
    targets = tuple(target_modules or cfg.target_modules or lora_target_modules(model))
    cfg = replace(cfg, target_modules=targets, target_parameters=tuple(target_parameters) or cfg.target_parameters)
    _, holdout = split_holdout(rows, cfg)
    metrics: dict[str, float] = {}
    if measure_base and holdout:
        metrics["base_exact_match_holdout"] = _accuracy(model, tokenizer, holdout, template, cfg.max_new_tokens)
    init_from = str(library.get(spec.id).path) if update and continue_training else None
    log.info("training brick %s on %d rows, LoRA r=%d on %s", spec.id, len(rows), cfg.r, ", ".join(targets))
    result = train_lora(model, tokenizer, rows, cfg, template=template, on_step=on_step, init_from=init_from)
    if result.holdout_size:  # fewer than 10 rows have no held-out part
        metrics["exact_match_holdout"] = round(result.holdout_accuracy, 4)
    metrics.update({"holdout_rows": float(result.holdout_size), "train_steps": float(result.steps),
                    "train_rows": float(len(rows) - result.holdout_size)})
    if eval_rows:
        metrics["exact_match_test"] = _accuracy(result.model, tokenizer, eval_rows, template, cfg.max_new_tokens)
    metrics["train_seconds"] = round(time.perf_counter() - t0, 1)
    examples = spec.examples or _default_examples(rows)
    with tempfile.TemporaryDirectory(prefix="brickwork-train-") as tmp:
        folder = write_lora_brick(result.model, Path(tmp) / spec.id, brick_id=spec.id, description=spec.description,
                                  examples=examples, base_model=library.base_model, metrics=metrics,
                                  prompt_template=spec.prompt_template, prompt_format="raw",  # trained on the raw template
                                  skills=spec.skills or _default_skills(rows))
        brick = library.update(folder) if update else library.add(folder)
    log.info("brick %s trained in %.1f s: held-out exact match %.3f", brick.key, metrics["train_seconds"],
             result.holdout_accuracy)
    return TrainedBrick(brick, metrics, result.steps, metrics["train_seconds"], result.history)
