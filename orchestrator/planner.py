"""The planner: decompose an instruction, route each step through the brick index, return a Plan."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from orchestrator.plan import BrickConfig, BrickRef, Decoding, Plan, Step
from orchestrator.validation import check_text
from policies import BASE_KEY, Composition, Decomposer, Route, RoutingPolicy, RuleDecomposer, TopOne

__all__ = ["Planner"]

log = logging.getLogger(__name__)


class Planner:
    """Pure planning over an open library and its index; no model is touched here."""

    def __init__(self, library, index, *, routing: RoutingPolicy | None = None,
                 decomposer: Decomposer | None = None, decoding: Decoding = Decoding(),
                 composition: Composition = Composition(), canonical: bool | None = None) -> None:
        self.library = library
        self.index = index
        self.routing = routing or TopOne()
        self.decomposer = decomposer or RuleDecomposer()
        self.decoding = decoding
        self.composition = composition
        # None: as the library says (LibraryConfig.canonical_instructions)
        self.canonical = (getattr(getattr(library, "config", None), "canonical_instructions", False)
                          if canonical is None else canonical)
        self._bricks: dict = {}
        self.excluded: dict[str, str] = {}
        self.refresh()

    def refresh(self) -> None:
        """Re-read the library's bricks (after a brick was added or removed)."""
        self._bricks = {b.key: b for b in self.library.list() if b.key not in self.excluded}

    def exclude(self, key: str, reason: str) -> None:
        """Never route to `key` (e.g. a brick that does not fit the loaded model)."""
        log.warning("brick %s excluded from routing: %s", key, reason)
        self._bricks.pop(key, None)
        self.excluded[key] = reason

    def _usable(self, hits):
        return [h for h in hits if h.key in self._bricks or h.key == BASE_KEY]

    def _config(self, route: Route) -> tuple[BrickConfig, str | None]:
        refs = []
        for rb in route.bricks:  # routes only name usable bricks (see _usable)
            brick = self._bricks[rb.key]
            refs.append(BrickRef(id=brick.id, version=brick.version, kind=brick.kind, weight=rb.weight, score=rb.score))
        loras = [r for r in refs if r.role == "adapter"]
        template = self._bricks[refs[0].key].manifest.prompt_template if len(refs) == 1 else None
        if len(loras) < 2:
            return BrickConfig(bricks=tuple(refs), mask_merge=self.composition.mask_merge), template
        return BrickConfig(bricks=tuple(refs), merge=self.composition.merge, density=self.composition.density,
                           mask_merge=self.composition.mask_merge), template

    def _canonical(self, route: Route, hits) -> str | None:
        """The trained phrasing nearest to the step, when the route took the nearest hit (see `canonical`)."""
        if not self.canonical or not hits:
            return None
        best = hits[0]
        if best.score < getattr(self.routing, "threshold", 0.5):
            return None  # not close enough to any trained phrasing: the model sees the user's words
        if route.is_base:
            known = self.library.base_examples if best.key == BASE_KEY and route.best_score == best.score else ()
        elif route.bricks[0].key == best.key:
            known = self._bricks[best.key].manifest.examples
        else:
            known = ()
        return best.text if best.text in known else None

    def plan_many(self, tasks: Sequence[tuple[object, object]]) -> list[Plan]:
        """Plans for many (instruction, input) pairs; all step instructions are searched in one batch."""
        checked = [(check_text(i, "instruction"), check_text(x if x is not None else "", "input", allow_empty=True))
                   for i, x in tasks]
        parts = [self.decomposer.split(instruction) for instruction, _ in checked]
        flat = [p for ps in parts for p in ps]
        hits = self.index.search_many(flat, self.routing.k) if flat else []
        plans, pos = [], 0
        for (instruction, text), ps in zip(checked, parts):
            steps = []
            for j, part in enumerate(ps):
                usable = self._usable(hits[pos])
                route = self.routing.route(usable)
                pos += 1
                config, template = self._config(route)
                shown = self._canonical(route, usable)
                steps.append(Step(instruction=part, input_from=None if j == 0 else j - 1, config=config,
                                  decoding=self.decoding, prompt_template=template,
                                  model_instruction=shown if shown != part else None, route=route.reason))
            plans.append(Plan(instruction=instruction, input=text, steps=tuple(steps)))
        return plans

    def plan(self, instruction: object, input: object = None) -> Plan:
        return self.plan_many([(instruction, input)])[0]

