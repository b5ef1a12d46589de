"""brickwork's orchestrator: plans (Plan, Step, BrickConfig), the Planner, executors and the Orchestrator API.

Heavy libraries load only when used: `import orchestrator` is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.plan import BrickConfig, BrickRef, Decoding, Plan, PlanError, Step
from orchestrator.result import Result, StepTrace

if TYPE_CHECKING:
    from orchestrator.api import Orchestrator
    from orchestrator.executors.base import Executor, GenerationRequest

__all__ = ["BrickConfig", "BrickRef", "Decoding", "Executor", "GenerationRequest", "Orchestrator", "Plan",
           "PlanError", "Result", "Step", "StepTrace"]


def __getattr__(name: str):
    if name == "Orchestrator":
        from orchestrator.api import Orchestrator

        return Orchestrator
    if name in ("Executor", "GenerationRequest"):
        from orchestrator.executors import base as executor

        return getattr(executor, name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
