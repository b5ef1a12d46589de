"""`brickwork calibrate`: fit per-brick routing thresholds on labeled instructions, save them beside the library.

Labeled rows are JSONL with `instruction` and either `brick` (a brick id, or null for the base model) or
`skills` (ordered skill ids; the instruction is decomposed and each step labeled with the brick serving its
skill, no skill meaning the base model). The thresholds go to `<library>/routing.json` (written atomically),
which `Orchestrator.from_pretrained` reads when no routing policy is given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bricks.atomic import atomic_write_text
from bricks.errors import ConfigError
from orchestrator.evaluation import expected_routes
from policies import BASE_KEY, RuleDecomposer, TopOne
from policies.calibration import RoutingMetrics, ScoredExample, fit_thresholds, routing_metrics

__all__ = ["ROUTING_FILE", "Calibration", "read_labeled", "score_steps", "calibrate", "load_thresholds",
           "save_thresholds"]

ROUTING_FILE = "routing.json"


@dataclass(frozen=True)
class Calibration:
    """Fitted thresholds, and routing quality with the current and the fitted thresholds."""

    thresholds: dict[str, float]
    default: float
    steps: int
    before: RoutingMetrics
    after: RoutingMetrics


def read_labeled(path: Path, library) -> list[tuple[str, str | None]]:
    """(step instruction, brick id or None) pairs from a labeled JSONL; a ValueError names `path:line`."""
    routes = expected_routes(library)
    decomposer = RuleDecomposer()
    out: list[tuple[str, str | None]] = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text = row["instruction"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ConfigError(f"{path}:{n}: expected a JSON object with an instruction") from None
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{path}:{n}: instruction must be a non-empty string")
        if "brick" in row:
            out.append((text, row["brick"]))
            continue
        skills = row.get("skills")
        if not isinstance(skills, list):
            raise ConfigError(f"{path}:{n}: give `brick` (id or null) or `skills` (a list)")
        if not skills:
            out.append((text, None))
            continue
        steps = decomposer.split(text)
        if len(steps) != len(skills):
            raise ConfigError(f"{path}:{n}: {len(steps)} steps but {len(skills)} skills")
        out += [(s, routes.get(k)) for s, k in zip(steps, skills)]
    if not out:
        raise ConfigError(f"{path}: no labeled rows")
    return out


def score_steps(planner, labeled: Sequence[tuple[str, str | None]]) -> list[ScoredExample]:
    """Each step's top usable hit (brick id, or None for the base entry) and its score."""
    hits = planner.index.search_many([s for s, _ in labeled], planner.routing.k)
    out = []
    for (_, label), found in zip(labeled, hits):
        usable = planner._usable(found)
        top = usable[0] if usable else None
        brick = None if top is None or top.key == BASE_KEY else planner._bricks[top.key].id
        out.append(ScoredExample(label, brick, top.score if top else 0.0))
    return out


def calibrate(planner, labeled: Sequence[tuple[str, str | None]], default: float | None = None, *,
              check: Sequence[tuple[str, str | None]] | None = None) -> Calibration:
    """Fit thresholds on `labeled`; measure the current and the fitted thresholds on `check` (default: `labeled`)."""
    default = getattr(planner.routing, "threshold", 0.5) if default is None else default
    examples = score_steps(planner, labeled)
    measured_on = examples if check is None else score_steps(planner, check)
    current = dict(getattr(planner.routing, "thresholds", {}) or {})
    thresholds = fit_thresholds(examples, default)
    return Calibration(thresholds, default, len(examples), routing_metrics(measured_on, current, default),
                       routing_metrics(measured_on, thresholds, default))


def save_thresholds(library_path: Path, cal: Calibration, source: str) -> Path:
    path = Path(library_path) / ROUTING_FILE
    atomic_write_text(path, json.dumps({"format": 1, "default": cal.default, "thresholds": cal.thresholds,
                                        "fitted_on": source, "steps": cal.steps}, indent=2) + "\n")
    return path


def load_thresholds(library_path: Path) -> Mapping[str, float] | None:
    """The calibrated thresholds of a library, None when it was never calibrated."""
    path = Path(library_path) / ROUTING_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(k): float(v) for k, v in data["thresholds"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"{path}: corrupt routing file; rerun `brickwork calibrate`") from None


def calibrated_routing(library_path: Path) -> TopOne | None:
    thresholds = load_thresholds(library_path)
    return TopOne(thresholds=thresholds) if thresholds else None
