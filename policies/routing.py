"""Routing policies: from index hits to the bricks a step runs with (or the base model alone)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from bricks.emergent.quality import RETENTION_METRIC
from bricks.errors import BrickworkError, ConfigError

if TYPE_CHECKING:
    from index import SearchHit

__all__ = ["BASE_KEY", "route_class", "RoutedBrick", "Route", "RoutingPolicy", "TopOne", "TopKWeighted", "snap_weights",
           "DEFAULT_EMERGENT_MIN_RETENTION", "EmergentRoutes", "emergent_routes"]

BASE_KEY = "base"  # the index entry for what the base model does with no brick


def route_class(key: str, text: str, groups: Mapping[str, str]) -> tuple[str, str]:
    """The route an index hit stands for: its brick key, or for the base entry (key, skill), the skill being
    `groups[text]` (the emergent brick that serves that base example) or else the example itself."""
    return (key, groups.get(text, text)) if key == BASE_KEY else (key, "")
DEFAULT_EMERGENT_MIN_RETENTION = 0.99  # a base skill's step runs on its emergent brick when it keeps this much


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
    abstain: bool = False  # no brick and not the base model: nothing here serves this step (see `abstain`)

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
                      thresholds: Mapping[str, float] | None = None, abstain: bool = False) -> Route | None:
    if not hits:
        return Route((), "fallback: the index is empty", None)
    best = hits[0]
    base_threshold = (thresholds or {}).get(BASE_KEY, threshold)
    base = next((h for h in hits if h.key == BASE_KEY), None)
    if best.key == BASE_KEY:
        if abstain and best.score < base_threshold:
            return Route((), f"abstain: nearest is the base model at {best.score:.3f} < threshold {base_threshold}, "
                             "and no brick is nearer", best.score, abstain=True)
        return Route((), f"base: nearest to what the base model does ({best.score:.3f})", best.score)
    threshold = (thresholds or {}).get(brick_id(best.key), threshold)
    if best.score < threshold:
        if abstain and (base is None or base.score < base_threshold):
            seen = f"{base.score:.3f}" if base is not None else "not among the hits"
            return Route((), f"abstain: best score {best.score:.3f} ({best.key}) < threshold {threshold}, and the "
                             f"base model does not serve it either ({seen} < {base_threshold})", best.score,
                         abstain=True)
        return Route((), f"fallback: best score {best.score:.3f} ({best.key}) < threshold {threshold}", best.score)
    return None


@dataclass(frozen=True)
class TopOne:
    """The single best brick when its score reaches its threshold, else the base model.

    `thresholds` (brick id -> threshold, from `brickwork calibrate`) override `threshold` per brick.
    `emergent_min_retention`: a step routed to the base model runs on its skill's emergent brick when the
    brick's recorded retention reaches it (see `emergent_routes`); None turns emergent routing off.
    `retrieval`: "dense" (cosine similarity) or "hybrid" (dense and BM25 rankings fused by reciprocal rank; the
    hits keep their cosine scores, so `threshold` means the same).
    `spelling`: misspelt words of a step are repaired against the indexed words before it is searched
    (`index.spelling.SpellingRepair`; English words are never changed).
    `rerank`: routes are ordered by best cosine plus a routing head's probability, a linear classifier fitted on
    the index's own texts (`orchestrator.reranker`; indexes of up to 20,000 texts); hits keep their cosine. It
    scores every indexed text, so `retrieval` applies only with `rerank=False` (or past 20,000 texts).
    `abstain`: a step whose best brick is under its threshold goes to the base model only when the base entry
    reaches its own threshold (`thresholds["base"]`, else `threshold`); otherwise, and when the nearest entry is
    the base model's under that threshold, the step abstains: it is not run and fails naming why (no silent
    answer from a model that does not serve the instruction). Off by default: weak steps go to the base model.
    """

    threshold: float = 0.5
    name: str = "top1"
    k: int = 3
    thresholds: Mapping[str, float] = field(default_factory=dict)
    emergent_min_retention: float | None = DEFAULT_EMERGENT_MIN_RETENTION
    retrieval: Literal["dense", "hybrid"] = "dense"
    spelling: bool = True
    rerank: bool = True
    abstain: bool = False

    def __post_init__(self) -> None:
        _check_retention(self.emergent_min_retention)
        _check_retrieval(self.retrieval)

    def route(self, hits: Sequence[SearchHit]) -> Route:
        early = _base_or_fallback(hits, self.threshold, self.thresholds, self.abstain)
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
    adapter; a route left with one brick runs it alone (weight 1). `emergent_min_retention`, `retrieval`,
    `spelling`, `rerank` and `abstain` as in `TopOne`.
    """

    k: int = 3
    threshold: float = 0.5
    temperature: float = 0.05
    name: str = "topk"
    thresholds: Mapping[str, float] = field(default_factory=dict)
    weight_floor: float = 0.05
    weight_grid: float | None = 0.01
    emergent_min_retention: float | None = DEFAULT_EMERGENT_MIN_RETENTION
    retrieval: Literal["dense", "hybrid"] = "dense"
    spelling: bool = True
    rerank: bool = True
    abstain: bool = False

    def __post_init__(self) -> None:
        _check_retention(self.emergent_min_retention)
        _check_retrieval(self.retrieval)
        if not 0.0 <= self.weight_floor < 1.0:
            raise ValueError(f"weight_floor must be in [0, 1), got {self.weight_floor}")
        if self.weight_grid is not None and not (0.0 < self.weight_grid <= 1.0
                                                 and abs(1 / self.weight_grid - round(1 / self.weight_grid)) < 1e-6):
            raise ValueError(f"weight_grid must be 1/n for a whole n >= 1 (0.01, 0.05, 0.1, ...), "
                             f"got {self.weight_grid}")

    def route(self, hits: Sequence[SearchHit]) -> Route:
        early = _base_or_fallback(hits, self.threshold, self.thresholds, self.abstain)
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


def _check_retrieval(value: str) -> None:
    if value not in ("dense", "hybrid"):
        raise ConfigError(f"unknown retrieval {value!r}; expected 'dense' or 'hybrid'")


def _check_retention(value: float | None) -> None:
    if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ConfigError(f"emergent_min_retention {value!r} must be in [0, 1], or None (emergent routing off)")


@dataclass(frozen=True)
class EmergentRoutes:
    """Which mask bricks routing keeps away from the policy, and which serve base-model steps.

    `hidden`: mask bricks the routing policy never sees: those whose examples repeat the library's base examples
    (an emergent brick of a base skill: it must not outrank a LoRA brick with the base model's own phrasings),
    those marked `"routable": false`, and those whose recorded retention is under the threshold.
    `by_text`: a base example -> the emergent brick that serves it (retention at or above the threshold).
    """

    hidden: frozenset[str] = frozenset()
    by_text: Mapping[str, str] = field(default_factory=dict)
    retention: Mapping[str, float] = field(default_factory=dict)
    min_retention: float | None = None

    def route_base(self, route: Route, hits: Sequence[SearchHit], threshold: float) -> Route | None:
        """The emergent route for a step `route` sent to the base model because its nearest hit (at least
        `threshold`) is a base example that an emergent brick serves; None to keep the base model."""
        if route.abstain or not route.is_base or not hits or hits[0].key != BASE_KEY or hits[0].score < threshold:
            return None
        key = self.by_text.get(hits[0].text)
        if key is None:
            return None
        why = (f"emergent {key} (retention {self.retention[key]:.4f} >= {self.min_retention}) "
               f"for {hits[0].text!r}; {route.reason}")
        return Route((RoutedBrick(key, 1.0, hits[0].score),), why, route.best_score)


def emergent_routes(bricks: Iterable, base_examples: Sequence[str], min_retention: float | None) -> EmergentRoutes:
    """`EmergentRoutes` of a library's bricks (`Brick`s: key, kind, manifest) for `min_retention` (None: no
    brick serves the base model; hidden bricks stay hidden). Several bricks serving one base example: the one
    with the highest retention, then the lowest density (fewest FLOPs), then the first key."""
    from bricks.kinds import get_kind

    _check_retention(min_retention)
    base = set(base_examples)
    hidden: set[str] = set()
    best: dict[str, tuple[float, float, str]] = {}
    retention: dict[str, float] = {}
    for brick in bricks:
        manifest = getattr(brick, "manifest", None)
        try:
            if get_kind(getattr(manifest, "kind", None) or getattr(brick, "kind", "")).role != "mask":
                continue
        except BrickworkError:  # not a known kind (a stand-in brick): never a mask
            continue
        metrics = getattr(manifest, "metrics", None) or {}
        kept = metrics.get(RETENTION_METRIC)
        routable = getattr(manifest, "routable", True) is not False
        duplicates = base.intersection(getattr(manifest, "examples", None) or ())
        passes = routable and kept is not None and min_retention is not None and kept >= min_retention
        if duplicates or not routable or (kept is not None and min_retention is not None and not passes):
            hidden.add(brick.key)
        if duplicates and passes:
            retention[brick.key] = float(kept)
            rank = (-float(kept), float(metrics.get("density", 1.0)), brick.key)
            for text in duplicates:
                if text not in best or rank < best[text]:
                    best[text] = rank
    return EmergentRoutes(frozenset(hidden), {t: r[2] for t, r in best.items()}, retention, min_retention)
