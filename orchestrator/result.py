"""What a run returns: the output, the plan, and a trace of every step."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from orchestrator.plan import BrickRef, Plan

__all__ = ["StepTrace", "Result", "CANCELLED"]

CANCELLED = "cancelled: the caller went away"  # the error of a step not run (or stopped) for that reason


class StepTrace(BaseModel):
    """One executed step: its instruction, the input it got, the bricks it ran with, its output and timings."""

    model_config = ConfigDict(frozen=True)

    index: int
    instruction: str
    input: str
    output: str
    bricks: tuple[BrickRef, ...]
    route: str | None
    timings_ms: dict[str, float]
    error: str | None = None  # why this step did not run or failed; the outputs of earlier steps are kept
    output_tokens: int | None = None  # tokens the model wrote for `output`, when the executor says (else None)
    prompt_tokens: int | None = None  # tokens of the prompt the model read, special ones included (ditto)


class Result(BaseModel):
    """The answer to one task and how it was reached."""

    model_config = ConfigDict(frozen=True)

    instruction: str
    input: str
    output: str
    plan: Plan
    steps: tuple[StepTrace, ...]
    timings_ms: dict[str, float]
    error: str | None = None
