"""Plan correctness: did the planner pick the right steps, in order, each routed to the right brick?"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["PlanScore", "expected_routes", "plan_correctness", "per_chain"]

BASE = "base"


@dataclass(frozen=True)
class PlanScore:
    """Plans with every step right; steps routed right (a step count mismatch makes all its steps wrong)."""

    plans_correct: int
    plans: int
    steps_correct: int
    steps: int

    @property
    def plan_accuracy(self) -> float:
        return self.plans_correct / self.plans if self.plans else 0.0

    @property
    def routing_accuracy(self) -> float:
        return self.steps_correct / self.steps if self.steps else 0.0


def expected_routes(library, *, emergent_min_retention: float | None = None) -> dict[str, str]:
    """Skill id -> the brick id that serves it (from each manifest's `skills`, else its id); others run on base.

    Mask bricks the routing policy never sees (`policies.routing.emergent_routes`: those repeating the base
    model's examples, not routable, or under the retention threshold) serve no skill, except that with
    `emergent_min_retention` (the planner's policy option) a base skill's emergent brick that reaches it serves
    its skill."""
    from policies.routing import emergent_routes

    bricks = library.list()
    emergent = emergent_routes(bricks, library.base_examples, emergent_min_retention)
    serving = set(emergent.by_text.values())
    out: dict[str, str] = {}
    for brick in bricks:
        if brick.key in emergent.hidden and brick.key not in serving:
            continue
        for skill in getattr(brick.manifest, "skills", None) or [brick.id]:
            out[skill] = brick.id
    return out


def plan_correctness(rows: Sequence[Mapping], plans: Sequence, routes: Mapping[str, str]) -> PlanScore:
    """Score plans against rows' gold `skills` (ordered): each step's first brick id, or base, must match."""
    plans_ok = steps_ok = steps = 0
    for row, plan in zip(rows, plans):
        want = [routes.get(s, BASE) for s in row["skills"]]
        got = [s.config.bricks[0].id if s.config.bricks else BASE for s in plan.steps]
        steps += len(want)
        if len(got) == len(want):
            hits = sum(w == g for w, g in zip(want, got))
            steps_ok += hits
            plans_ok += hits == len(want)
    return PlanScore(plans_ok, len(rows), steps_ok, steps)


def per_chain(rows: Sequence[Mapping], limit: int) -> list[Mapping]:
    """At most `limit` rows of each skill chain (the row's `skills` in order), keeping the rows' order; every row
    when `limit` is 0."""
    if not limit:
        return list(rows)
    seen: Counter[str] = Counter()
    kept = []
    for r in rows:
        chain = "+".join(r["skills"])
        seen[chain] += 1
        if seen[chain] <= limit:
            kept.append(r)
    return kept
