"""The planner: decompose an instruction, route each step through the brick index, return a Plan."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from bricks.prompt import History, as_history, check_format
from index import SearchHit
from orchestrator.plan import BrickConfig, BrickRef, Decoding, Plan, Step
from orchestrator.validation import check_text
from policies import BASE_KEY, Composition, Decomposer, Route, RoutingPolicy, RuleDecomposer, TopOne
from policies.routing import EmergentRoutes, emergent_routes, route_class

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
        self._alias_cache: tuple[tuple, dict[tuple[str, str], str]] | None = None
        self._repair_cache: tuple[tuple, object] | None = None
        self._reranker_cache: tuple[tuple, object] | None = None
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

    def _alias_targets(self) -> dict[tuple[str, str], str]:
        """(key, indexed text) -> the trained phrasing it stands for: a brick's description and aliases stand for
        its first example, a base alias for its base example (so emergent routing and canonical instructions
        treat a hit on them as a hit on that phrasing)."""
        base_aliases = getattr(self.library, "base_aliases", None) or {}
        stamp = (id(self._bricks), len(self._bricks), tuple(base_aliases))
        if self._alias_cache is None or self._alias_cache[0] != stamp:
            targets = {(BASE_KEY, a): example for example, aliases in base_aliases.items() for a in aliases}
            for key, brick in self._bricks.items():
                examples = list(getattr(brick.manifest, "examples", None) or ())
                if examples:
                    for text in (getattr(brick.manifest, "description", None), *getattr(brick.manifest, "aliases", ())):
                        if text not in examples:
                            targets[(key, text)] = examples[0]
            self._alias_cache = (stamp, targets)
        return self._alias_cache[1]

    def _queries(self, parts: list[str]) -> list[str]:
        """The step texts as searched: misspelt words repaired against the index's words when the routing
        policy's `spelling` is on (see `index.spelling`)."""
        if not getattr(self.routing, "spelling", False) or not parts or not hasattr(self.index, "documents"):
            return parts
        from index.spelling import SpellingRepair

        stamp = (id(self.index), getattr(self.index, "source_fingerprint", None), len(self.index))
        if self._repair_cache is None or self._repair_cache[0] != stamp:
            texts = [t for ts in self.index.documents().values() for t in ts]
            self._repair_cache = (stamp, SpellingRepair(texts))
        repair = self._repair_cache[1]
        return [repair.repair(p) for p in parts]

    def nearest(self, texts: Sequence[str], k: int) -> list[list[SearchHit]]:
        """The `k` nearest index keys of each text by cosine (spelling repaired as the policy says), each hit's
        text the trained phrasing it stands for (an alias or description: the brick's first example)."""
        if not texts:
            return []
        return self._as_trained(self.index.search_many(self._queries(list(texts)), k), self._alias_targets())

    @staticmethod
    def _as_trained(hits: list[list[SearchHit]], targets: dict[tuple[str, str], str]) -> list[list[SearchHit]]:
        """`hits` with each text replaced by the trained phrasing it stands for (see `_alias_targets`)."""
        return [[SearchHit(h.key, h.score, targets.get((h.key, h.text), h.text)) for h in found] for found in hits]

    def _search(self, parts: list[str], emergent: EmergentRoutes) -> list[list[SearchHit]]:
        if not parts:
            return []
        queries, k = self._queries(parts), self.routing.k
        targets = self._alias_targets()
        reranker = self._reranker(emergent, targets) if getattr(self.routing, "rerank", False) else None
        if reranker is not None:  # every text is scored: no nearest-neighbour search first
            return reranker.rerank(self.index.embedder.embed(queries), k + len(self.excluded))
        if getattr(self.routing, "retrieval", "dense") == "hybrid":  # hidden bricks take no rank in the fusion
            hits = self.index.search_many(queries, k, hybrid=True, exclude=emergent.hidden)
        else:
            hits = self.index.search_many(queries, k + len(emergent.hidden))
        return self._as_trained(hits, targets)

    def _reranker(self, emergent: EmergentRoutes, targets: dict[tuple[str, str], str]):
        """The routing head of the current index and bricks (None for an index too large for one, or one
        that cannot give its texts back). Base examples are grouped by the mask brick that repeats them (the
        skill they belong to) whatever its retention, so the head does not change with `emergent_min_retention`."""
        from orchestrator.reranker import MAX_HEAD_TEXTS, HeadReranker

        if not hasattr(self.index, "entries") or len(self.index) > MAX_HEAD_TEXTS or not len(self.index):
            return None
        stamp = (id(self.index), getattr(self.index, "source_fingerprint", None), len(self.index),
                 id(self._bricks), len(self._bricks), id(targets), emergent.hidden)
        if self._reranker_cache is None or self._reranker_cache[0] != stamp:
            base_examples = tuple(getattr(self.library, "base_examples", None) or ())
            groups = emergent_routes(self._bricks.values(), base_examples, 0.0).by_text
            self._reranker_cache = (stamp, HeadReranker(self.index, targets=targets, groups=groups,
                                                        hidden=emergent.hidden))
        return self._reranker_cache[1]

    def _rejoin_fragments(self, instructions: list[str], parts: list[list[str]], hits: list[list[SearchHit]],
                          emergent: EmergentRoutes) -> tuple[list[list[str]], list[list[SearchHit]]]:
        """Undo a split that did not find a chain: when a step of a split instruction has no hit at the routing
        threshold ("Take each letter; write it twice": "Take each letter." is no task), or two steps in a row go
        to the same route (one task told in two clauses), and the whole instruction routes, it is one step."""
        threshold = getattr(self.routing, "threshold", 0.5)

        def top(found: list[SearchHit]) -> SearchHit | None:
            best = next((h for h in found if h.key not in emergent.hidden), None)
            return best if best is not None and best.score >= threshold else None

        def route_of(best: SearchHit | None) -> tuple[str, str] | None:
            if best is None:
                return None
            return route_class(best.key, best.text, emergent.by_text)

        suspect, pos = [], 0
        for i, ps in enumerate(parts):
            if len(ps) > 1:
                routes = [route_of(top(found)) for found in hits[pos:pos + len(ps)]]
                if None in routes or any(a == b for a, b in zip(routes, routes[1:])):
                    suspect.append(i)
            pos += len(ps)
        if not suspect:
            return parts, hits
        from policies.decompose import normalize_step

        wholes = {i: normalize_step(instructions[i]) for i in suspect}
        whole_hits = dict(zip(suspect, self._search(list(wholes.values()), emergent)))
        new_parts, new_hits, pos = [], [], 0
        for i, ps in enumerate(parts):
            found = whole_hits.get(i)
            if found is not None and top(found) is not None:
                new_parts.append([wholes[i]])
                new_hits.append(found)
            else:
                new_parts.append(ps)
                new_hits.extend(hits[pos:pos + len(ps)])
            pos += len(ps)
        return new_parts, new_hits

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
        emergent = self.emergent()
        k = self.routing.k
        flat = [p for ps in parts for p in ps]
        hits = self._search(flat, emergent)
        parts, hits = self._rejoin_fragments([c[0] for c in checked], parts, hits, emergent)
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
                                  model_instruction=shown if shown != part else None, route=route.reason,
                                  abstain=route.reason if route.abstain else None))
            plans.append(Plan(instruction=instruction, input=text, steps=tuple(steps), history=history))
        return plans

    def plan(self, instruction: object, input: object = None, history: object = None) -> Plan:
        """The plan for one instruction; `history` (earlier messages) is context, not planned."""
        return self.plan_many([(instruction, input, history)])[0]

