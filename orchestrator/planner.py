"""The planner: decompose an instruction, route each step through the brick index, return a Plan."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from bricks.prompt import History, as_history, check_format
from orchestrator.plan import BrickConfig, BrickRef, Decoding, Plan, Step
from orchestrator.validation import check_text
from policies import BASE_KEY, Composition, Decomposer, Route, RoutingPolicy, RuleDecomposer, TopOne
from policies.routing import EmergentRoutes, emergent_routes

__all__ = ["Planner"]

log = logging.getLogger(__name__)


class Planner:
    """Pure planning over an open library and its index; no model is touched here.

    Emergent bricks: a step the routing policy sends to the base model runs on the emergent (ffn_mask) brick of
    its skill, compact, when that brick's recorded retention reaches the policy's `emergent_min_retention`
    (see `policies.routing.emergent_routes`); mask bricks that repeat the base model's examples never take part
    in the policy's choice, so they cannot take a step from a LoRA brick. Only a plan's first step (which works
    on the task's input, the kind of input the retention was measured on) goes to an emergent brick: a later
    step works on another step's output (e.g. a word doubled to 16 letters) and runs on the whole model.
    """

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
        self._emergent_cache: tuple[tuple, EmergentRoutes] | None = None
        self.refresh()

    def refresh(self) -> None:
        """Re-read the library's bricks (after a brick was added or removed)."""
        self._bricks = {b.key: b for b in self.library.list() if b.key not in self.excluded}

    def exclude(self, key: str, reason: str) -> None:
        """Never route to `key` (e.g. a brick that does not fit the loaded model)."""
        log.warning("brick %s excluded from routing: %s", key, reason)
        self._bricks.pop(key, None)
        self.excluded[key] = reason

    def emergent(self) -> EmergentRoutes:
        """The emergent routes of the current bricks under the routing policy's `emergent_min_retention`."""
        threshold = getattr(self.routing, "emergent_min_retention", None)
        base_examples = tuple(getattr(self.library, "base_examples", None) or ())
        stamp = (id(self._bricks), len(self._bricks), threshold, base_examples)
        if self._emergent_cache is None or self._emergent_cache[0] != stamp:
            self._emergent_cache = (stamp, emergent_routes(self._bricks.values(), base_examples, threshold))
        return self._emergent_cache[1]

    def _usable(self, hits):
        hidden = self.emergent().hidden
        return [h for h in hits if (h.key in self._bricks and h.key not in hidden) or h.key == BASE_KEY]

    def _config(self, route: Route) -> tuple[BrickConfig, str | None, str | None]:
        refs = []
        for rb in route.bricks:  # routes only name usable bricks (see _usable)
            brick = self._bricks[rb.key]
            refs.append(BrickRef(id=brick.id, version=brick.version, kind=brick.kind, weight=rb.weight, score=rb.score))
        loras = [r for r in refs if r.role == "adapter"]
        manifest = self._bricks[refs[0].key].manifest if len(refs) == 1 else None
        template = manifest.prompt_template if manifest is not None else None
        fmt = check_format(getattr(manifest, "prompt_format", None), f"brick {refs[0].key} prompt_format") \
            if manifest is not None else None  # "raw" or "chat" when the brick says how it was trained
        if len(loras) < 2:
            return BrickConfig(bricks=tuple(refs), mask_merge=self.composition.mask_merge), template, fmt
        return BrickConfig(bricks=tuple(refs), merge=self.composition.merge, density=self.composition.density,
                           mask_merge=self.composition.mask_merge), template, fmt

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

    def plan_many(self, tasks: Sequence[tuple[object, ...]]) -> list[Plan]:
        """Plans for many (instruction, input) pairs or (instruction, input, history) triples; all step
        instructions are searched in one batch.

        Only the instruction is decomposed and routed (the last user turn); the history (earlier messages, see
        `bricks.prompt.as_history`) is context, recorded in the plan for the prompt renderer.
        """
        checked = [(check_text(t[0], "instruction"), check_text(t[1] if t[1] is not None else "", "input",
                                                                allow_empty=True)) for t in tasks]
        histories: list[History] = [as_history(t[2] if len(t) > 2 else None) for t in tasks]
        for history in histories:
            for i, m in enumerate(history):
                check_text(m.content, f"history message {i}", allow_empty=True)
        split_many = getattr(self.decomposer, "split_many", None)  # a model decomposer: one batched decode
        parts = (split_many([instruction for instruction, _ in checked]) if split_many is not None
                 else [self.decomposer.split(instruction) for instruction, _ in checked])
        flat = [p for ps in parts for p in ps]
        emergent = self.emergent()
        k = self.routing.k
        if getattr(self.routing, "retrieval", "dense") == "hybrid":  # hidden bricks take no rank in the fusion
            hits = self.index.search_many(flat, k, hybrid=True, exclude=emergent.hidden) if flat else []
        else:
            hits = self.index.search_many(flat, k + len(emergent.hidden)) if flat else []
        plans, pos = [], 0
        for (instruction, text), ps, history in zip(checked, parts, histories):
            steps = []
            for j, part in enumerate(ps):
                usable = self._usable([h for h in hits[pos] if h.key not in emergent.hidden][:k])
                route = self.routing.route(usable)
                pos += 1
                shown = self._canonical(route, usable)
                if j == 0:  # retention was measured on task inputs, not on another step's output (longer words)
                    route = emergent.route_base(route, usable, getattr(self.routing, "threshold", 0.5)) or route
                config, template, fmt = self._config(route)
                steps.append(Step(instruction=part, input_from=None if j == 0 else j - 1, config=config,
                                  decoding=self.decoding, prompt_template=template, prompt_format=fmt,
                                  model_instruction=shown if shown != part else None, route=route.reason))
            plans.append(Plan(instruction=instruction, input=text, steps=tuple(steps), history=history))
        return plans

    def plan(self, instruction: object, input: object = None, history: object = None) -> Plan:
        """The plan for one instruction; `history` (earlier messages) is context, not planned."""
        return self.plan_many([(instruction, input, history)])[0]

