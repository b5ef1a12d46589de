"""The analysis plots of a mixture of experts' emergent bricks: expert use per skill, per MoE layer.

For each MoE layer, a heatmap of skills x experts: the share of a skill's tokens the router sends to each expert
(a row sums to top_k), on one 0..top_k scale for every layer; and one of the same shares minus the mean share of
the other skills (which experts a skill uses more than the rest), on a diverging scale centred at 0.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.analysis import heatmap_figure

__all__ = ["expert_usage_figures", "write_expert_plots"]


def expert_usage_figures(profile) -> dict[str, object]:
    """{file stem: matplotlib figure} of `profile` (`bricks.expert_mask.ExpertProfile`): `experts_usage_layer{i}`
    and `experts_specialization_layer{i}` for each MoE layer i."""
    usage = profile.usage()  # [S, L, E]
    skills = list(profile.skills)
    experts = [str(e) for e in range(profile.num_experts)]
    figures = {}
    for layer in profile.moe_layers:
        shares = usage[:, layer]  # [S, E]
        figures[f"experts_usage_layer{layer}"] = heatmap_figure(
            shares.tolist(), skills, experts, f"Expert use per skill, MoE layer {layer} (top-{profile.top_k})",
            xlabel="expert", ylabel="skill", vmin=0.0, vmax=float(profile.top_k),
            cbar_label="share of the skill's tokens routed to the expert")
        if len(skills) > 1:
            rest = (shares.sum(0, keepdim=True) - shares) / (len(skills) - 1)  # [S, E] mean of the other skills
            figures[f"experts_specialization_layer{layer}"] = heatmap_figure(
                (shares - rest).tolist(), skills, experts, f"Expert use above the other skills', MoE layer {layer}",
                xlabel="expert", ylabel="skill", centered=True, cmap="RdBu_r",
                cbar_label="share routed minus the other skills' mean share")
    return figures


def write_expert_plots(profile, out: Path) -> list[Path]:
    """Write `expert_usage_figures(profile)` as PNG files into the folder `out` (created); returns their paths."""
    from orchestrator.analysis import _pyplot

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, fig in expert_usage_figures(profile).items():
        path = out / f"{stem}.png"
        fig.savefig(path, dpi=90)
        _pyplot().close(fig)
        paths.append(path)
    return paths
