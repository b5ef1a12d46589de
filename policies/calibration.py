"""Routing calibration: fit a score threshold per brick on labeled instructions, and measure routing.

A labeled example is a step instruction with the brick id it should reach (None: the base model). The router
sends a step to its top hit when that hit's score reaches the hit's threshold. For each brick, the threshold
that maximises F1 on the examples is chosen (midway between the kept and the dropped score), so bricks that
are easy to confuse get a stricter bar and distinctive ones a looser one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["ScoredExample", "RoutingMetrics", "fit_thresholds", "routing_metrics", "route_of"]


@dataclass(frozen=True)
class ScoredExample:
    """A labeled step: the brick id it should reach (None: base), and its top hit's brick id (None: base) and score."""

    label: str | None
    top: str | None
    score: float


@dataclass(frozen=True)
class RoutingMetrics:
    """Per-brick precision and recall, and the share of all examples routed right."""

    precision: dict[str, float]
    recall: dict[str, float]
    accuracy: float

    @property
    def macro_precision(self) -> float:
        return sum(self.precision.values()) / len(self.precision) if self.precision else 0.0

    @property
    def macro_recall(self) -> float:
        return sum(self.recall.values()) / len(self.recall) if self.recall else 0.0


def route_of(ex: ScoredExample, thresholds: Mapping[str, float], default: float) -> str | None:
    """Where the router sends `ex`: its top brick when the score reaches that brick's threshold, else base."""
    if ex.top is None:
        return None
    return ex.top if ex.score >= thresholds.get(ex.top, default) else None


def routing_metrics(examples: Sequence[ScoredExample], thresholds: Mapping[str, float], default: float) -> RoutingMetrics:
    bricks = sorted({e.label for e in examples if e.label} | {e.top for e in examples if e.top})
    routed = [route_of(e, thresholds, default) for e in examples]
    precision, recall = {}, {}
    for b in bricks:
        tp = sum(r == b and e.label == b for r, e in zip(routed, examples))
        sent = sum(r == b for r in routed)
        wanted = sum(e.label == b for e in examples)
        precision[b] = tp / sent if sent else 1.0
        recall[b] = tp / wanted if wanted else 1.0
    accuracy = sum(r == e.label for r, e in zip(routed, examples)) / len(examples) if examples else 0.0
    return RoutingMetrics(precision, recall, accuracy)


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def fit_thresholds(examples: Sequence[ScoredExample], default: float) -> dict[str, float]:
    """The F1-best threshold of every brick that is some example's top hit.

    Candidate thresholds lie midway between neighbouring scores; among equally good ones the one closest to
    `default` wins, so a threshold moves off the default only as far as the labeled examples demand.
    """
    out: dict[str, float] = {}
    for b in sorted({e.top for e in examples if e.top}):
        mine = [e for e in examples if e.top == b]
        missed = sum(e.label == b and e.top != b for e in examples)  # no threshold of b can reach these
        scores = sorted({e.score for e in mine})
        candidates = {default, scores[0] - 0.02, scores[-1] + 1e-4}
        candidates |= {(lo + hi) / 2 for lo, hi in zip(scores, scores[1:])}

        def quality(t: float) -> tuple[float, float]:
            tp = sum(e.score >= t and e.label == b for e in mine)
            fp = sum(e.score >= t and e.label != b for e in mine)
            fn = missed + sum(e.score < t and e.label == b for e in mine)
            return (_f1(tp, fp, fn), -abs(t - default))

        out[b] = round(max(sorted(candidates), key=quality), 4)
    return out
