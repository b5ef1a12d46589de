"""From an expert profile to gated expert_mask bricks: per skill, the most-used experts of every MoE layer under
a budget, their retention of the whole model's right answers on held-out rows, and the bricks written.

The quality gate is the one of FFN-neuron bricks (`bricks.emergent.quality`): a brick runs keep-only on held-out
rows of its skill; its retention (the share of the base model's right answers it keeps) and `density` (the share
of routed experts it keeps) go into its manifest metrics, and a brick under `min_retention` is not added (or is
added `"routable": false` with `keep_failing`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from bricks.emergent.pipeline import Candidate, add_candidates, gate_candidates
from bricks.emergent.quality import DEFAULT_MIN_SUPPORT, masked_outputs
from bricks.errors import ConfigError
from bricks.expert_mask.profile import ExpertProfile
from bricks.layer_masks import write_layer_mask_brick
from bricks.manifest import BaseModelRef

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

    return masked_outputs(model, tokenizer, rows, masks, mode=mode, max_new_tokens=max_new_tokens,
                          batch_size=batch_size, apply=apply_expert_masks)


def gate_expert_candidates(model, tokenizer, candidates: Sequence[Candidate], heldout: Sequence, *,
                           limit_per_skill: int | None = None, max_new_tokens: int = 24) -> list[Candidate]:
    """Each candidate with its retention measured keep-only on the held-out single-skill rows (`InstructionRow`s)
    of its gate skill, and the figures (plus `density`) in its metrics (`bricks.emergent.pipeline`'s gate, with
    expert routing in place of FFN neurons); a candidate without a gate skill is an error."""
    from bricks.expert_mask.layout import moe_layout
    from bricks.expert_mask.routing import expert_density

    dims = moe_layout(model).dims
    unmeasured = next((c for c in candidates if c.gate_skill is None), None)
    if unmeasured is not None:
        skills = sorted({r.skills[0] for r in heldout if len(r.skills) == 1})
        raise ConfigError(f"no held-out rows of skill None to measure brick {unmeasured.brick_id!r} on; "
                          f"held-out skills: {', '.join(skills) or 'none'}")
    return gate_candidates(model, tokenizer, candidates, heldout, limit_per_skill=limit_per_skill,
                           max_new_tokens=max_new_tokens, outputs=expert_outputs, label="expert brick",
                           density=lambda masks: expert_density(masks, dims.moe_layers, dims.num_experts))


def write_expert_brick(folder: Path, masks: Mapping[int, "object"], *, brick_id: str, description: str,
                       examples: Sequence[str], base_model: BaseModelRef, metrics: Mapping[str, float],
                       skills: Sequence[str] = (), version: int = 1, extra: Mapping[str, object] | None = None) -> Path:
    """An `expert_mask` brick in `folder` (which must not exist yet), written atomically; `extra` adds manifest
    keys (e.g. `{"routable": False}`)."""
    return write_layer_mask_brick(folder, masks, kind="expert_mask", brick_id=brick_id, description=description,
                                  examples=examples, base_model=base_model, metrics=metrics, skills=skills,
                                  version=version, extra=extra)


def add_expert_candidates(library, candidates: Sequence[Candidate], *, min_retention: float,
                          min_support: int = DEFAULT_MIN_SUPPORT, keep_failing: bool = False,
                          model_config=None) -> tuple[list, list[Candidate]]:
    """Add the gated candidates to `library` (checked against `model_config` when given); returns (added bricks,
    candidates refused). The gate is `bricks.emergent.pipeline.add_candidates`'s."""
    return add_candidates(library, candidates, min_retention=min_retention, min_support=min_support,
                          keep_failing=keep_failing, writer=write_expert_brick, label="expert brick",
                          model_config=model_config)
