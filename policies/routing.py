"""Routing policies: from index hits to the bricks a step runs with (or the base model alone)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from index import SearchHit

__all__ = ["BASE_KEY", "RoutedBrick", "Route", "RoutingPolicy", "TopOne", "TopKWeighted", "snap_weights"]

BASE_KEY = "base"  # the index entry for what the base model does with no brick


@dataclass(frozen=True)
class RoutedBrick:
    """A chosen brick: its library key (`id@version`), mixture weight and similarity score."""

    key: str
    weight: float
    score: float


@dataclass(frozen=True)
class Route:
    """The routing decision for one instruction; no bricks means the base model alone."""

    bricks: tuple[RoutedBrick, ...]
    reason: str
    best_score: float | None = None

    @property
    def is_base(self) -> bool:
        return not self.bricks


class RoutingPolicy(Protocol):
    """Chooses bricks from the hits of an index search, best first."""

    name: str
    k: int  # how many distinct hits the policy wants to see

    def route(self, hits: Sequence[SearchHit]) -> Route: ...


def brick_id(key: str) -> str:
    """`caesar@2` -> `caesar`: calibrated thresholds belong to a brick id, whatever its version."""
    return key.rsplit("@", 1)[0]


def _base_or_fallback(hits: Sequence[SearchHit], threshold: float,
                      thresholds: Mapping[str, float] | None = None) -> Route | None:
    if not hits:
        return Route((), "fallback: the index is empty", None)
    best = hits[0]
    if best.key == BASE_KEY:
        return Route((), f"base: nearest to what the base model does ({best.score:.3f})", best.score)
    threshold = (thresholds or {}).get(brick_id(best.key), threshold)
    if best.score < threshold:
        return Route((), f"fallback: best score {best.score:.3f} ({best.key}) < threshold {threshold}", best.score)
    return None


@dataclass(frozen=True)
class TopOne:
    """The single best brick when its score reaches its threshold, else the base model.

    `thresholds` (brick id -> threshold, from `brickwork calibrate`) override `threshold` per brick.
    """

    threshold: float = 0.5
    name: str = "top1"
    k: int = 3
    thresholds: Mapping[str, float] = field(default_factory=dict)

    def route(self, hits: Sequence[SearchHit]) -> Route:
        early = _base_or_fallback(hits, self.threshold, self.thresholds)
        if early:
            return early
        best = hits[0]
        return Route((RoutedBrick(best.key, 1.0, best.score),), f"top-1 {best.key} ({best.score:.3f})", best.score)


def snap_weights(weights: Sequence[float], floor: float = 0.05, grid: float | None = 0.01) -> list[float]:
    """Mixture weights fit for a merge cache key: normalized to sum 1, those under `floor` set to 0, the rest
    renormalized and rounded to multiples of `grid` that still sum to 1 (largest remainders round up).

    The largest weight is always kept; a weight that rounds to 0 is dropped. `floor=0` drops nothing and
    `grid=None` does not round. Continuous weights would make every plan a new merged adapter; snapped ones
    take few values (grid 0.01: at most C(99 + k, k - 1) weight vectors for the same k bricks).
    """
    if not weights or any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
        raise ValueError(f"mixture weights must be finite, non-negative and not all 0, got {list(weights)}")
    total = sum(weights)
    w = [x / total for x in weights]
    top = max(range(len(w)), key=w.__getitem__)
    kept = [x if x >= floor or i == top else 0.0 for i, x in enumerate(w)]
    total = sum(kept)
    kept = [x / total for x in kept]
    if grid is None:
        return kept
    units = round(1 / grid)
    scaled = [x * units for x in kept]
    snapped = [math.floor(x) for x in scaled]
    by_remainder = sorted(range(len(w)), key=lambda i: (snapped[i] - scaled[i], i))  # largest remainder first
    for i in by_remainder[: units - sum(snapped)]:
        snapped[i] += 1
    return [n / units for n in snapped]


@dataclass(frozen=True)
class TopKWeighted:
    """Up to `k` bricks scoring at least `threshold`, weighted by a softmax of score / temperature.

    Bricks ranked below the base-model entry are not taken: the base already covers what they would add.
    Weights are then snapped (`snap_weights`): bricks under `weight_floor` are dropped, the rest renormalized
    and rounded to multiples of `weight_grid` (None: not rounded), so that near-equal routes share one merged
    adapter; a route left with one brick runs it alone (weight 1).
    """

    k: int = 3
    threshold: float = 0.5
    temperature: float = 0.05
    name: str = "topk"
    thresholds: Mapping[str, float] = field(default_factory=dict)
    weight_floor: float = 0.05
    weight_grid: float | None = 0.01

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight_floor < 1.0:
            raise ValueError(f"weight_floor must be in [0, 1), got {self.weight_floor}")
        if self.weight_grid is not None and not (0.0 < self.weight_grid <= 1.0
                                                 and abs(1 / self.weight_grid - round(1 / self.weight_grid)) < 1e-6):
            raise ValueError(f"weight_grid must be 1/n for a whole n >= 1 (0.01, 0.05, 0.1, ...), "
                             f"got {self.weight_grid}")

    def route(self, hits: Sequence[SearchHit]) -> Route:
        early = _base_or_fallback(hits, self.threshold, self.thresholds)
        if early:
            return early
        chosen = []
        for hit in hits[: self.k]:
            if hit.key == BASE_KEY or hit.score < self.thresholds.get(brick_id(hit.key), self.threshold):
                break
            chosen.append(hit)
        top = chosen[0].score
        raw = [math.exp((h.score - top) / self.temperature) for h in chosen]
        snapped = snap_weights(raw, self.weight_floor, self.weight_grid)
        bricks = tuple(RoutedBrick(h.key, w, h.score) for h, w in zip(chosen, snapped) if w > 0)
        desc = ", ".join(f"{b.key}:{b.weight:.2f}" for b in bricks)
        dropped = [h.key for h, w in zip(chosen, snapped) if w == 0]
        if dropped:
            desc += f" (dropped under weight floor {self.weight_floor}: {', '.join(dropped)})"
        return Route(bricks, f"top-{len(bricks)} weighted {desc}", top)
