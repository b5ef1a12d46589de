"""Routing policies: from index hits to the bricks a step runs with (or the base model alone)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from index import SearchHit

__all__ = ["BASE_KEY", "RoutedBrick", "Route", "RoutingPolicy", "TopOne", "TopKWeighted"]

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


@dataclass(frozen=True)
class TopKWeighted:
    """Up to `k` bricks scoring at least `threshold`, weighted by a softmax of score / temperature.

    Bricks ranked below the base-model entry are not taken: the base already covers what they would add.
    """

    k: int = 3
    threshold: float = 0.5
    temperature: float = 0.05
    name: str = "topk"
    thresholds: Mapping[str, float] = field(default_factory=dict)

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
        total = sum(raw)
        bricks = tuple(RoutedBrick(h.key, w / total, h.score) for h, w in zip(chosen, raw))
        desc = ", ".join(f"{b.key}:{b.weight:.2f}" for b in bricks)
        return Route(bricks, f"top-{len(bricks)} weighted {desc}", top)
