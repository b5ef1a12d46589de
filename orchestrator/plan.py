"""Plans as data: BrickRef, BrickConfig, Decoding, Step, Plan. Tiny immutable values with a JSON round trip."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bricks.errors import BrickworkError
from bricks.kinds import get_kind
from bricks.prompt import MAX_HISTORY_MESSAGES, Message, PromptFormat
from orchestrator.validation import MAX_INSTRUCTION_CHARS, check_text

__all__ = ["BrickRef", "BrickConfig", "Decoding", "Step", "Plan", "PlanError", "MergeMethod", "MaskMerge",
           "MERGE_METHODS", "PLAN_FORMAT", "MAX_PLAN_STEPS"]

PLAN_FORMAT = 1
# How several LoRA bricks of one step become one adapter (PEFT's `add_weighted_adapter` combination types):
# cat and svd are exact / near-exact weighted sums of the deltas; linear, ties and dare work on the A, B factors.
MergeMethod = Literal["single", "cat", "linear", "svd", "ties", "ties_svd", "dare_linear", "dare_ties",
                      "dare_linear_svd", "dare_ties_svd", "magnitude_prune"]
MERGE_METHODS: tuple[str, ...] = MergeMethod.__args__  # type: ignore[attr-defined]
# How several emergent (ffn_mask) bricks of one step combine: keep the neurons of any brick, or of all.
MaskMerge = Literal["union", "intersection"]
_NEEDS_DENSITY = ("ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd", "magnitude_prune")


class PlanError(BrickworkError):
    """A plan is malformed or refers to something that does not exist."""


MAX_PLAN_STEPS = 64  # every plan, decomposed or given: a plan of hundreds of steps is a mistake, not a task


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BrickRef(_Value):
    """One brick in a step's configuration: exact id and version, its kind, weight and routing score."""

    id: str
    version: int = Field(ge=1)
    kind: str
    weight: float = 1.0
    score: float | None = None

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        return get_kind(v).name

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"

    @property
    def role(self) -> str:
        """How an executor applies this brick: "adapter" (LoRA weights) or "mask" (FFN neurons)."""
        return get_kind(self.kind).role


class BrickConfig(_Value):
    """The bricks a step runs with; no bricks means the base model alone."""

    bricks: tuple[BrickRef, ...] = ()
    merge: MergeMethod = "single"
    density: float | None = Field(default=None, gt=0.0, le=1.0)  # kept fraction for ties / dare / prune merges
    mask_merge: MaskMerge = "union"
    mask_mode: Literal["keep", "ablate"] = "keep"  # run only the mask bricks' neurons, or all but them

    @model_validator(mode="after")
    def _check(self) -> "BrickConfig":
        loras = self.loras
        if len(loras) > 1 and self.merge == "single":
            raise ValueError(f"{len(loras)} LoRA bricks need a merge method (one of {', '.join(MERGE_METHODS[1:])}),"
                             " not 'single'")
        if self.merge in _NEEDS_DENSITY and self.density is None:
            raise ValueError(f"merge method {self.merge!r} needs a density in (0, 1]")
        keys = [b.key for b in self.bricks]
        if len(set(keys)) != len(keys):
            raise ValueError(f"brick listed twice in one configuration: {keys}")
        return self

    @property
    def loras(self) -> tuple[BrickRef, ...]:
        return tuple(b for b in self.bricks if b.role == "adapter")

    @property
    def masks(self) -> tuple[BrickRef, ...]:
        return tuple(b for b in self.bricks if b.role == "mask")

    @property
    def lora_key(self) -> str:
        """A stable name of the LoRA part (bricks, weights, merge method, density): the merge cache key."""
        loras = sorted(self.loras, key=lambda b: b.key)
        if not loras:
            return "base"
        if len(loras) == 1 and self.merge == "single":
            return loras[0].key
        parts = ",".join(f"{b.key}*{b.weight:.4g}" for b in loras)
        density = f";d={self.density:.4g}" if self.density is not None else ""
        return f"{self.merge}({parts}{density})"

    @property
    def mask_key(self) -> str:
        """A stable name of the mask part: `-` for none."""
        masks = sorted(b.key for b in self.masks)
        if not masks:
            return "-"
        name = masks[0] if len(masks) == 1 else f"{self.mask_merge}({','.join(masks)})"
        return name if self.mask_mode == "keep" else f"ablate({name})"

    @property
    def key(self) -> str:
        """A stable name of this configuration (bricks, weights, merge methods)."""
        if not self.bricks:
            return "base"
        if not self.masks:
            return self.lora_key
        return self.mask_key if not self.loras else f"{self.lora_key}+{self.mask_key}"


class Decoding(_Value):
    """Decoding settings: greedy when temperature is 0."""

    max_new_tokens: int = Field(default=64, ge=1, le=4096)
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)


class Step(_Value):
    """One step: its instruction, where its input comes from, and its brick configuration."""

    instruction: str = Field(min_length=1)
    input_from: int | None = None  # None: the task's input; i: the output of step i (< this step)
    config: BrickConfig = BrickConfig()
    decoding: Decoding = Decoding()
    prompt_template: str | None = None
    prompt_format: PromptFormat | None = None  # "raw", "chat" (the model's chat template); None: chosen by the model
    model_instruction: str | None = None  # what the model is shown instead of `instruction` (canonical phrasing)
    route: str | None = None  # why these bricks (routing policy's reason), for inspection
    abstain: str | None = None  # why nothing serves this step (the routing policy abstained): it is not run


class Plan(_Value):
    """An inspectable, replayable plan: `Plan.from_json(plan.to_json()) == plan`."""

    format: int = PLAN_FORMAT
    instruction: str
    input: str = ""
    steps: tuple[Step, ...] = Field(min_length=1, max_length=MAX_PLAN_STEPS)
    # the conversation before this task, oldest first: context every step's prompt is rendered with
    history: tuple[Message, ...] = Field(default=(), max_length=MAX_HISTORY_MESSAGES)

    @model_validator(mode="after")
    def _check_inputs(self) -> "Plan":
        for what, text in (("instruction", self.instruction), ("input", self.input),
                           *((f"step {i} instruction", s.instruction) for i, s in enumerate(self.steps)),
                           *((f"history message {i}", m.content) for i, m in enumerate(self.history))):
            check_text(text, what, allow_empty=True, max_chars=MAX_INSTRUCTION_CHARS * 4)
        for i, step in enumerate(self.steps):
            if step.input_from is not None and not 0 <= step.input_from < i:
                raise ValueError(f"step {i} takes its input from step {step.input_from}, expected a step before {i}")
        return self

    def to_json(self, indent: int | None = None) -> str:
        return self.model_dump_json(indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Plan":
        try:
            return cls.model_validate_json(text)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
            raise PlanError(f"invalid plan: {problems}") from None

    def waves(self) -> list[list[int]]:
        """Step indices grouped so that each group depends only on earlier groups (run a group as one batch)."""
        level: list[int] = []
        for step in self.steps:
            level.append(0 if step.input_from is None else level[step.input_from] + 1)
        return [[i for i, lv in enumerate(level) if lv == w] for w in range(max(level) + 1)]
