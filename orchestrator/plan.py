"""Plans as data: BrickRef, BrickConfig, Decoding, Step, Plan. Tiny immutable values with a JSON round trip."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["BrickRef", "BrickConfig", "Decoding", "Step", "Plan", "PlanError", "MergeMethod", "PLAN_FORMAT"]

PLAN_FORMAT = 1
MergeMethod = Literal["single", "cat", "linear"]


class PlanError(ValueError):
    """A plan is malformed or refers to something that does not exist."""


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BrickRef(_Value):
    """One brick in a step's configuration: exact id and version, its kind, weight and routing score."""

    id: str
    version: int = Field(ge=1)
    kind: Literal["lora", "ffn_mask"]
    weight: float = 1.0
    score: float | None = None

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"


class BrickConfig(_Value):
    """The bricks a step runs with; no bricks means the base model alone."""

    bricks: tuple[BrickRef, ...] = ()
    merge: MergeMethod = "single"

    @model_validator(mode="after")
    def _check(self) -> "BrickConfig":
        loras = [b for b in self.bricks if b.kind == "lora"]
        if len(loras) > 1 and self.merge == "single":
            raise ValueError(f"{len(loras)} LoRA bricks need a merge method (cat or linear), not 'single'")
        return self

    @property
    def key(self) -> str:
        """A stable name of this configuration (bricks, weights, merge method)."""
        if not self.bricks:
            return "base"
        parts = ",".join(f"{b.key}*{b.weight:.4g}" for b in sorted(self.bricks, key=lambda b: b.key))
        return f"{self.merge}({parts})" if len(self.bricks) > 1 else self.bricks[0].key


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
    route: str | None = None  # why these bricks (routing policy's reason), for inspection


class Plan(_Value):
    """An inspectable, replayable plan: `Plan.from_json(plan.to_json()) == plan`."""

    format: int = PLAN_FORMAT
    instruction: str
    input: str = ""
    steps: tuple[Step, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_inputs(self) -> "Plan":
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
