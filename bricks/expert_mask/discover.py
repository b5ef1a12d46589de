"""From an expert profile to gated expert_mask bricks: per skill, the most-used experts of every MoE layer under
a budget, their retention of the whole model's right answers on held-out rows, and the bricks written.

The quality gate is the one of FFN-neuron bricks (`bricks.emergent.quality`): a brick runs keep-only on held-out
rows of its skill; its retention (the share of the base model's right answers it keeps) and `density` (the share
of routed experts it keeps) go into its manifest metrics, and a brick under `min_retention` is not added (or is
added `"routable": false` with `keep_failing`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from bricks.atomic import staged_folder
from bricks.emergent.pipeline import Candidate, add_candidates
from bricks.emergent.quality import DEFAULT_MIN_SUPPORT, measure_retention
from bricks.errors import ConfigError
from bricks.expert_mask.brick import EXPERT_MASK_FILE, ExpertMaskBrick
from bricks.expert_mask.profile import ExpertProfile
from bricks.manifest import BaseModelRef, BrickManifest, file_entry

__all__ = ["select_experts", "expert_candidates", "expert_outputs", "gate_expert_candidates", "write_expert_brick",
           "add_expert_candidates"]

log = logging.getLogger(__name__)


def select_experts(profile: ExpertProfile, skill: str, *, keep: float = 0.5, min_keep: int | None = None) -> dict:
    """{MoE layer: bool [E]} the `max(ceil(keep * E), top_k, min_keep)` experts the skill's tokens were routed to
    most often (ties: the lower expert index)."""
    import torch

    if not 0.0 < keep <= 1.0:
        raise ConfigError(f"expert budget keep={keep} must be in (0, 1]")
    E = profile.num_experts
    n = min(E, max(math.ceil(keep * E), profile.top_k, min_keep or 0))
    usage = profile.usage()[profile.skill_index(skill)]  # [L, E]
    out = {}
    for layer in profile.moe_layers:
        order = torch.sort(usage[layer], descending=True, stable=True).indices  # [E]
        mask = torch.zeros(E, dtype=torch.bool)
        mask[order[:n]] = True
        out[layer] = mask
    return out


def expert_candidates(profile: ExpertProfile, instructions: Mapping[str, Sequence[str]], *, keep: float = 0.5,
                      prefix: str = "experts-") -> list[Candidate]:
    """One candidate brick per profiled skill: its selected experts, its instructions as routing examples."""
    out = []
    for skill in profile.skills:
        masks = select_experts(profile, skill, keep=keep)
        kept = int(next(iter(masks.values())).sum()) if masks else profile.num_experts
        out.append(Candidate(f"{prefix}{skill}", masks, f"The {kept} of {profile.num_experts} experts per MoE layer "
                             f"that skill {skill} is routed to most.", tuple(instructions.get(skill, ())), (skill,),
                             skill))
    return out


def expert_outputs(model, tokenizer, rows: Sequence[Mapping], masks: Mapping[int, object] | None = None, *,
                   mode: str = "keep", max_new_tokens: int = 24, batch_size: int = 64) -> list[str]:
    """Greedy answers to rows (`instruction`, `input`) in the default prompt template, routed among the masked
    experts only (`masks=None`: the whole model)."""
    from bricks.expert_mask.routing import apply_expert_masks
    from bricks.generation import generate_texts
    from bricks.prompt import DEFAULT_TEMPLATE

    prompts = [DEFAULT_TEMPLATE.render(r["instruction"], r.get("input", "") or "") for r in rows]
    with apply_expert_masks(model, masks, mode) if masks is not None else contextlib.nullcontext():
        return generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)


def gate_expert_candidates(model, tokenizer, candidates: Sequence[Candidate], heldout: Sequence, *,
                           limit_per_skill: int | None = None, max_new_tokens: int = 24) -> list[Candidate]:
    """Each candidate with its retention measured keep-only on the held-out single-skill rows (`InstructionRow`s)
    of its gate skill, and the figures (plus `density`) in its metrics."""
    from bricks.expert_mask.layout import moe_layout
    from bricks.expert_mask.routing import expert_density

    dims = moe_layout(model).dims
    by_skill: dict[str, list[dict]] = {}
    for r in heldout:
        if len(r.skills) == 1:
            rows = by_skill.setdefault(r.skills[0], [])
            if limit_per_skill is None or len(rows) < limit_per_skill:
                rows.append(r.as_dict())
    base: dict[str, list[str]] = {}
    out = []
    for cand in candidates:
        metrics = {**cand.metrics, "density": round(expert_density(cand.masks, dims.moe_layers, dims.num_experts), 4)}
        rows = by_skill.get(cand.gate_skill or "")
        if not rows:
            raise ConfigError(f"no held-out rows of skill {cand.gate_skill!r} to measure brick {cand.brick_id!r} on; "
                              f"held-out skills: {', '.join(sorted(by_skill)) or 'none'}")
        if cand.gate_skill not in base:
            base[cand.gate_skill] = expert_outputs(model, tokenizer, rows, max_new_tokens=max_new_tokens)
        kept = measure_retention(rows, base[cand.gate_skill],
                                 expert_outputs(model, tokenizer, rows, cand.masks, max_new_tokens=max_new_tokens))
        log.info("expert brick %s keeps %.4f of the base's right answers on %d held-out %s rows", cand.brick_id,
                 kept.retention, kept.rows, cand.gate_skill)
        out.append(replace(cand, metrics={**metrics, **kept.metrics()}, retention=kept))
    return out


def write_expert_brick(folder: Path, masks: Mapping[int, "object"], *, brick_id: str, description: str,
                       examples: Sequence[str], base_model: BaseModelRef, metrics: Mapping[str, float],
                       skills: Sequence[str] = (), version: int = 1, extra: Mapping[str, object] | None = None) -> Path:
    """An `expert_mask` brick in `folder` (which must not exist yet), written atomically; `extra` adds manifest
    keys (e.g. `{"routable": False}`)."""
    folder = Path(folder)
    with staged_folder(folder) as tmp:
        ExpertMaskBrick.write_masks(tmp, dict(masks))
        manifest = BrickManifest(
            id=brick_id, version=version, kind="expert_mask", description=description, examples=list(examples),
            base_model=base_model, files=[file_entry(tmp, EXPERT_MASK_FILE)], metrics=dict(metrics),
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), skills=list(skills),
            **dict(extra or {}))
        manifest.save(tmp / "brick.json")
    return folder


def add_expert_candidates(library, candidates: Sequence[Candidate], *, min_retention: float,
                          min_support: int = DEFAULT_MIN_SUPPORT, keep_failing: bool = False,
                          model_config=None) -> tuple[list, list[Candidate]]:
    """Add the gated candidates to `library` (checked against `model_config` when given); returns (added bricks,
    candidates refused). The gate is `bricks.emergent.pipeline.add_candidates`'s."""
    return add_candidates(library, candidates, min_retention=min_retention, min_support=min_support,
                          keep_failing=keep_failing, writer=write_expert_brick, label="expert brick",
                          model_config=model_config)
