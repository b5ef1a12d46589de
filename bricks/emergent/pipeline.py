"""From instruction rows to gated emergent bricks in a library: profile, choose neurons, measure, add.

`bricks discover` and the toy world's build step both run this: single-skill rows are profiled (with gold-answer
attribution when the criterion needs it), each skill (or co-activation partition) becomes a candidate mask,
every candidate is run keep-only on held-out rows and its retention recorded (`bricks.emergent.quality`), and
only candidates at or above `min_retention` are added to the library (`keep_failing=True` adds the others too,
marked `"routable": false`, so routing never sends a step to them).
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from bricks.emergent.quality import DEFAULT_MIN_SUPPORT, Retention, masked_outputs, measure_retention
from bricks.errors import ConfigError

__all__ = ["Candidate", "CRITERION_WORDS", "skill_examples", "split_holdout", "profile_skills", "skill_candidates",
           "partition_candidates", "gate_candidates", "gate_failure", "add_candidates"]

log = logging.getLogger(__name__)

CRITERION_WORDS = {"specific": "specificity (d')", "active": "mean |activation|",
                   "contribution": "|activation| x down_proj norm", "attribution": "gold-answer attribution"}

Example = tuple[str, str, str]  # (skill, prompt, gold answer)


@dataclass(frozen=True)
class Candidate:
    """A mask brick before it is added: its neurons, what routing reads, and the skill its retention is
    measured on (`gate_skill`); `retention` and the metrics are filled in by `gate_candidates`."""

    brick_id: str
    masks: dict
    description: str
    examples: tuple[str, ...]
    skills: tuple[str, ...]
    gate_skill: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    retention: Retention | None = None

    def passes(self, min_retention: float, min_support: int = 0) -> bool:
        """Whether the measured retention reaches `min_retention` on at least `min_support` rows the base model
        answers right (never, when not measured)."""
        r = self.retention
        return r is not None and r.base_correct >= min_support and r.retention >= min_retention


def skill_examples(rows: Iterable, skills: Collection[str] | None = None) -> tuple[list[Example], dict[str, list[str]]]:
    """(skill, prompt, answer) of the single-skill rows (`InstructionRow`s) of `skills` (all when None), and
    each skill's distinct instructions in order of appearance."""
    from bricks.prompt import DEFAULT_TEMPLATE

    pairs: list[Example] = []
    instructions: dict[str, list[str]] = {}
    for r in rows:
        if len(r.skills) != 1 or (skills and r.skills[0] not in skills):
            continue
        pairs.append((r.skills[0], DEFAULT_TEMPLATE.render(r.instruction, r.input), r.output))
        known = instructions.setdefault(r.skills[0], [])
        if r.instruction not in known:
            known.append(r.instruction)
    return pairs, instructions


def split_holdout(rows: Sequence, every: int = 5) -> tuple[list, list]:
    """(fit, held out): every `every`-th single-skill row of each skill is held out (never profiled)."""
    if every < 2:
        raise ConfigError(f"holdout every {every} rows leaves nothing to profile; expected >= 2")
    seen: Counter[str] = Counter()
    fit, held = [], []
    for r in rows:
        if len(r.skills) != 1:
            continue
        seen[r.skills[0]] += 1
        (held if seen[r.skills[0]] % every == 0 else fit).append(r)
    return fit, held


def profile_skills(model, tokenizer, examples: Sequence[Example], *, attribution: bool = False,
                   on_progress: Callable[[str, int, int], None] | None = None):
    """The neuron profile of `examples` (prompt + answer streamed); with `attribution`, gold-answer attribution
    scores too (`profile.attribution`). `on_progress(stage, done, total)` follows both passes."""
    from bricks.emergent.attribution import attribution_scores
    from bricks.emergent.profile import profile_neurons

    report = on_progress or (lambda stage, done, total: None)
    prof = profile_neurons(model, tokenizer, ((s, p + a) for s, p, a in examples),
                           on_batch=lambda n: report("profiling", n, len(examples)))
    if attribution:
        prof.add_attribution(attribution_scores(model, tokenizer, iter(examples),
                                                on_batch=lambda n: report("attribution", n, len(examples))))
    return prof


def skill_candidates(model, profile, instructions: Mapping[str, Sequence[str]], *, budget: float, criterion: str,
                     scope: str, prefix: str = "emergent-", max_examples: int = 8) -> list[Candidate]:
    """One keep-only candidate per profiled skill: the `budget` share of neurons by `criterion` (see
    `supervised_masks`), described by the skill's first instruction, with its instructions as examples."""
    from bricks.emergent.discover import down_proj_norms, supervised_masks

    norms = down_proj_norms(model) if criterion == "contribution" else None
    where = "of each layer" if scope == "layer" else "of all neurons"
    out = []
    for skill in profile.skills:
        masks = supervised_masks(profile, skill, budget=budget, criterion=criterion, scope=scope, down_norms=norms)
        desc = (f"Emergent FFN neurons for: {instructions[skill][0]} (the {budget:.0%} {where} "
                f"ranked by {CRITERION_WORDS.get(criterion, criterion)} on this skill)")
        out.append(Candidate(f"{prefix}{skill}", masks, desc, tuple(instructions[skill][:max_examples]), (skill,),
                             skill))
    return out


def partition_candidates(profile, k: int, prefix: str = "emergent-") -> list[Candidate]:
    """k balanced co-activation partitions (`cluster_neurons`); each is gated on the skill most of its top
    prompts belong to."""
    from bricks.emergent.discover import cluster_neurons

    out = []
    for part in cluster_neurons(profile, k):
        desc = f"Emergent FFN partition {part.index} of {k} (co-activation cluster); drives: " + "; ".join(
            p.splitlines()[0] for p in part.top_prompts[:3])
        top = Counter(part.top_skills).most_common(1)
        out.append(Candidate(f"{prefix}p{part.index}", part.masks, desc,
                             tuple(p.splitlines()[0] for p in part.top_prompts), (), top[0][0] if top else None))
    return out


def gate_candidates(model, tokenizer, candidates: Sequence[Candidate], heldout: Sequence, *,
                    limit_per_skill: int | None = None, max_new_tokens: int = 24, outputs=None, density=None,
                    label: str = "emergent brick") -> list[Candidate]:
    """Each candidate with its retention measured keep-only on the held-out single-skill rows of its gate
    skill, and the figures (plus `density`) in its metrics; a gate skill without held-out rows is an error.

    `outputs(model, tokenizer, rows, masks, max_new_tokens=...)` answers the rows under a mask (default:
    `masked_outputs`, compact FFN) and `density(masks)` is the share of the model the mask keeps (default: of
    the FFN neurons); MoE expert bricks pass theirs."""
    if density is None:
        from bricks.emergent.layout import ffn_layout
        from bricks.emergent.masking import mask_density

        layout = ffn_layout(model)

        def density(masks):
            return mask_density(masks, layout.num_layers, layout.intermediate_size)

    outputs = outputs or masked_outputs
    by_skill: dict[str, list[dict]] = {}
    for r in heldout:
        if len(r.skills) == 1:
            rows = by_skill.setdefault(r.skills[0], [])
            if limit_per_skill is None or len(rows) < limit_per_skill:
                rows.append(r.as_dict())
    base: dict[str, list[str]] = {}
    out = []
    for cand in candidates:
        metrics = {**cand.metrics, "density": round(density(cand.masks), 4)}
        if cand.gate_skill is None:
            log.warning("%s %s has no skill to measure its retention on", label, cand.brick_id)
            out.append(replace(cand, metrics=metrics))
            continue
        rows = by_skill.get(cand.gate_skill)
        if not rows:
            raise ConfigError(f"no held-out rows of skill {cand.gate_skill!r} to measure brick {cand.brick_id!r} on; "
                              f"held-out skills: {', '.join(sorted(by_skill)) or 'none'}")
        if cand.gate_skill not in base:
            base[cand.gate_skill] = outputs(model, tokenizer, rows, None, max_new_tokens=max_new_tokens)
        kept = measure_retention(rows, base[cand.gate_skill],
                                 outputs(model, tokenizer, rows, cand.masks, max_new_tokens=max_new_tokens))
        log.info("%s %s keeps %.4f of the base's right answers on %d held-out %s rows", label, cand.brick_id,
                 kept.retention, kept.rows, cand.gate_skill)
        out.append(replace(cand, metrics={**metrics, **kept.metrics()}, retention=kept))
    return out


def gate_failure(cand: Candidate, min_retention: float, min_support: int = DEFAULT_MIN_SUPPORT) -> str:
    """Why `cand` fails the gate, in one line ("" when it passes)."""
    r = cand.retention
    if r is None:
        return "retention not measured"
    if r.base_correct < min_support:
        return (f"measured on {r.base_correct} rows the base model answers right, fewer than "
                f"min_support {min_support}")
    if r.retention < min_retention:
        return f"keeps {r.retention:.4f} of the base model's right answers, under min_retention {min_retention}"
    return ""


def add_candidates(library, candidates: Sequence[Candidate], *, min_retention: float,
                   min_support: int = DEFAULT_MIN_SUPPORT, keep_failing: bool = False, writer=None,
                   label: str = "emergent brick", model_config=None) -> tuple[list, list[Candidate]]:
    """Add the gated candidates to `library` (via `Library.add`, checked against `model_config` when given);
    returns (added bricks, candidates refused).

    A candidate under `min_retention`, or measured on fewer than `min_support` rows the base model answers right
    (a retention of 1.0 on two rows says nothing), is refused with a warning, or with `keep_failing` added as
    `"routable": false` (kept for analysis, never routed). `writer` writes a candidate's brick folder (default:
    an ffn_mask brick, `bricks.emergent.export.write_mask_brick`)."""
    from bricks.emergent.export import write_mask_brick

    writer = writer or write_mask_brick

    if not 0.0 <= min_retention <= 1.0:
        raise ConfigError(f"min_retention {min_retention} must be in [0, 1]")
    if min_support < 0:
        raise ConfigError(f"min_support {min_support} must be >= 0")
    added, refused = [], []
    with tempfile.TemporaryDirectory(dir=library.path) as tmp:
        for cand in candidates:
            ok = cand.passes(min_retention, min_support)
            if not ok:
                log.warning("%s %s: %s: %s", label, cand.brick_id, gate_failure(cand, min_retention, min_support),
                            "added as not routable" if keep_failing else "not added")
                refused.append(cand)
                if not keep_failing:
                    continue
            folder = writer(Path(tmp) / cand.brick_id, cand.masks, brick_id=cand.brick_id,
                            description=cand.description, examples=cand.examples, base_model=library.base_model,
                            metrics=cand.metrics, skills=cand.skills, extra=None if ok else {"routable": False})
            added.append(library.add(folder, model_config=model_config))
    return added, refused
