"""Emergent-brick discovery from a neuron profile: per skill (supervised) or by co-activation (unsupervised).

Supervised: a skill's brick is the `budget` share of neurons (per layer, or ranked across layers) by a
criterion: `specific` (the skill-vs-rest d' score: neurons that fire more for this skill than for others),
`active` (the mean |activation| on the skill's prompts: everything the skill leans on, shared neurons
included), `contribution` (mean |activation| times the norm of the neuron's down_proj column) or `attribution`
(the mean of sum_t |a * dL/da| for the gold answers' loss, see bricks.emergent.attribution: what the answers
depend on; the profile must carry it, `profile.add_attribution(attribution_scores(...))`). Keep-only bricks
are best chosen by `attribution` ranked across layers (`scope="global"`).
Unsupervised (MoEfication-style): neurons are clustered by their activation pattern over a sample of prompts
into k balanced partitions (same size), each a brick whose examples are the prompts that drive it most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bricks.emergent.profile import NeuronProfile
from bricks.errors import ConfigError

__all__ = ["supervised_masks", "cluster_neurons", "Partition", "CRITERIA", "down_proj_norms"]

CRITERIA = ("specific", "active", "contribution", "attribution")


def down_proj_norms(model):
    """[L, I] norms of every layer's down_proj columns (how strongly each neuron writes), for `contribution`; on
    the CPU, beside the profile they are multiplied with, wherever the model's layers are."""
    from bricks.emergent.layout import ffn_layout

    return ffn_layout(model).down_norms()  # the family's down projection (a Conv1D's rows, a Linear's columns)


def supervised_masks(profile: NeuronProfile, skill: str, *, budget: float = 0.3, criterion: str = "specific",
                     scope: str = "layer", down_norms=None) -> dict[int, "object"]:
    """{layer: bool [I]}: the top `budget` share of neurons for `skill` by `criterion`.

    `scope="layer"` takes that share of every layer; `scope="global"` ranks all neurons together, so layers
    whose neurons the skill uses more (e.g. a dense last layer) get more of the same total budget.
    """
    import torch

    if skill not in profile.skills:
        raise ConfigError(f"skill {skill!r} was not profiled; profiled: {', '.join(profile.skills)}")
    if not 0 < budget <= 1:
        raise ConfigError(f"budget {budget} must be in (0, 1]")
    s = profile.skills.index(skill)
    if criterion == "specific":
        score = profile.specialization()[s]  # [L, I]
    elif criterion == "active":
        score = profile.mean_abs[s]
    elif criterion == "contribution":  # how much the neuron writes into the residual stream on this skill
        if down_norms is None:
            raise ConfigError("criterion 'contribution' needs down_norms ([L, I] norms of down_proj's columns)")
        score = profile.mean_abs[s] * down_norms
    elif criterion == "attribution":  # how much the gold answers' likelihood depends on the neuron
        if profile.attribution is None:
            raise ConfigError("criterion 'attribution' needs attribution scores in the profile "
                             "(profile.add_attribution(attribution_scores(model, tokenizer, examples)))")
        score = profile.attribution[s]
    else:
        raise ConfigError(f"unknown criterion {criterion!r}; expected one of {', '.join(map(repr, CRITERIA))}")
    L, I = score.shape
    k = max(1, int(round(budget * I)))
    if scope == "global":  # at most `budget` of all neurons, never rounded up
        flat = torch.zeros(L * I, dtype=torch.bool)
        flat[torch.topk(score.flatten(), max(1, math.floor(budget * L * I + 1e-9))).indices] = True
        return {layer: flat.reshape(L, I)[layer].clone() for layer in range(L)}
    if scope != "layer":
        raise ConfigError(f"unknown scope {scope!r}; expected 'layer' or 'global'")
    out = {}
    for layer in range(L):
        mask = torch.zeros(I, dtype=torch.bool)
        mask[torch.topk(score[layer], k).indices] = True
        out[layer] = mask
    return out


@dataclass(frozen=True)
class Partition:
    """One unsupervised brick: its neurons per layer and the sampled prompts that activate it most."""

    index: int
    masks: dict
    top_prompts: tuple[str, ...]
    top_skills: tuple[str, ...]


def cluster_neurons(profile: NeuronProfile, k: int, *, iterations: int = 10, seed: int = 0,
                    examples: int = 5) -> list[Partition]:
    """k balanced clusters of all FFN neurons by co-activation over the profile's prompt reservoir."""
    import torch

    if profile.reservoir is None or len(profile.reservoir) < 2:
        raise ConfigError("the profile has no prompt sample to cluster on; profile with reservoir > 1")
    R, L, I = profile.reservoir.shape
    if not 1 < k <= L * I:
        raise ConfigError(f"k={k} must be in 2..{L * I}")
    x = profile.reservoir.permute(1, 2, 0).reshape(L * I, R)  # [N, R] each neuron's pattern over prompts
    x = x - x.mean(1, keepdim=True)
    x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-8)  # cosine geometry: co-activation, not magnitude
    g = torch.Generator().manual_seed(seed)
    centers = x[torch.randperm(len(x), generator=g)[:k]].clone()  # [k, R]
    cap = -(-len(x) // k)
    assign = torch.zeros(len(x), dtype=torch.long)
    for _ in range(iterations):
        sim = x @ centers.T  # [N, k]
        order = torch.argsort(sim.flatten(), descending=True)
        assign.fill_(-1)
        load = torch.zeros(k, dtype=torch.long)
        left = len(x)
        for flat in order.tolist():  # greedy balanced assignment: best pairs first, clusters fill to `cap`
            n, c = divmod(flat, k)
            if assign[n] >= 0 or load[c] >= cap:
                continue
            assign[n] = c
            load[c] += 1
            left -= 1
            if not left:
                break
        for c in range(k):
            members = x[assign == c]
            if len(members):
                centers[c] = members.mean(0)
                centers[c] /= centers[c].norm().clamp(min=1e-8)
    parts = []
    raw = profile.reservoir.reshape(R, L * I)  # [R, N]
    for c in range(k):
        member = assign == c
        drive = raw[:, member].mean(1)  # [R] how strongly each sampled prompt drives the cluster
        top = torch.argsort(drive, descending=True)[:examples].tolist()
        masks = {layer: member.reshape(L, I)[layer].clone() for layer in range(L)}
        parts.append(Partition(c, masks, tuple(profile.reservoir_prompts[i] for i in top),
                               tuple(profile.reservoir_skills[i] for i in top)))
    return parts
