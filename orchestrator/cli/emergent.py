"""`brickwork bricks discover` and `brickwork analyze`: emergent bricks from a model's own FFN neurons."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional

import typer

from bricks.errors import ConfigError
from orchestrator.cli.root import LibraryOpt, ModelOpt, app, bricks_app, fail, first_line, user_errors

__all__ = ["discover", "analyze"]


_CRITERION_WORDS = {"specific": "specificity (d')", "active": "mean |activation|",
                    "contribution": "|activation| x down_proj norm", "attribution": "gold-answer attribution"}


def _skill_prompts(path: Path, skills: Optional[str]) -> tuple[list[tuple[str, str, str]], dict[str, list[str]]]:
    """(skill, prompt, answer) of single-skill rows, and each skill's distinct instructions."""
    from bricks.prompt import DEFAULT_TEMPLATE
    from bricks.rows import read_rows

    wanted = {s.strip() for s in skills.split(",")} if skills else None
    pairs, instructions = [], {}
    for r in read_rows(path, require_output=False):
        if len(r.skills) != 1 or (wanted and r.skills[0] not in wanted):
            continue
        pairs.append((r.skills[0], DEFAULT_TEMPLATE.render(r.instruction, r.input), r.output))
        instructions.setdefault(r.skills[0], [])
        if r.instruction not in instructions[r.skills[0]]:
            instructions[r.skills[0]].append(r.instruction)
    if not pairs:
        raise ConfigError(f"{path}: no single-skill rows (rows need `skills` with one skill id)")
    return pairs, instructions


def _profile(model_dir: Path, examples, progress_label: str, *, attribution: bool = False):
    """Load the model and profile its neurons on (skill, prompt, answer) examples (prompt + answer streamed);
    with `attribution`, also score the neurons by gold-answer attribution (`profile.attribution`)."""
    from rich.progress import Progress

    from bricks.emergent import profile_neurons
    from bricks.emergent.attribution import attribution_scores
    from bricks.model_io import load_model, load_tokenizer

    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    with Progress(transient=True) as bar:
        task = bar.add_task(progress_label, total=len(examples))
        prof = profile_neurons(model, tok, ((s, p + a) for s, p, a in examples),
                               on_batch=lambda n: bar.update(task, completed=n))
        if attribution:
            task = bar.add_task("attribution", total=len(examples))
            prof.add_attribution(attribution_scores(model, tok, iter(examples),
                                                    on_batch=lambda n: bar.update(task, completed=n)))
    return model, tok, prof


@bricks_app.command("discover")
def discover(data: Path = typer.Option(..., "--data", help="JSONL rows with instruction, input, output, skills."),
             model: Optional[Path] = ModelOpt, library: Optional[Path] = LibraryOpt,
             mode: str = typer.Option("supervised", "--mode", help="supervised (one brick per skill) | unsupervised"),
             budget: float = typer.Option(0.05, "--budget", help="Share of neurons per brick: of each layer "
                                                                  "(--scope layer) or of all (global)."),
             criterion: str = typer.Option("specific", "--criterion",
                                           help="specific | active | contribution | attribution (supervised; "
                                                "attribution: |activation x gradient| of the gold answers' loss, "
                                                "best for keep-only bricks with --scope global)."),
             scope: str = typer.Option("layer", "--scope", help="layer (budget per layer) | global (supervised)."),
             k: int = typer.Option(8, "--k", help="Number of partitions (unsupervised)."),
             skills: Optional[str] = typer.Option(None, "--skills", help="Comma-separated skills to keep."),
             prefix: str = typer.Option("emergent-", "--prefix", help="Brick id prefix.")) -> None:
    """Profile the model's FFN neurons on DATA and write emergent (ffn_mask) bricks into the library."""
    from bricks.emergent.discover import CRITERIA, cluster_neurons, down_proj_norms, supervised_masks
    from bricks.emergent.export import write_mask_brick
    from bricks.emergent.masking import mask_density
    from orchestrator.factory import model_dir, open_library, open_planner

    try:
        if mode not in ("supervised", "unsupervised"):
            raise ConfigError(f"unknown mode {mode!r}; expected supervised or unsupervised")
        if mode == "supervised" and criterion not in CRITERIA:
            raise ConfigError(f"unknown criterion {criterion!r}; expected one of {', '.join(CRITERIA)}")
        lib = open_library(library)
        pairs, instructions = _skill_prompts(data, skills)
        net, _, prof = _profile(model_dir(model), pairs, "profiling",
                                attribution=mode == "supervised" and criterion == "attribution")
        L, I = net.config.num_hidden_layers, net.config.intermediate_size
        found = []
        if mode == "supervised":
            norms = down_proj_norms(net) if criterion == "contribution" else None
            for skill in prof.skills:
                masks = supervised_masks(prof, skill, budget=budget, criterion=criterion, scope=scope,
                                         down_norms=norms)
                where = "of each layer" if scope == "layer" else "of all neurons"
                desc = (f"Emergent FFN neurons for: {instructions[skill][0]} (the {budget:.0%} {where} "
                        f"ranked by {_CRITERION_WORDS[criterion]} on this skill)")
                found.append((f"{prefix}{skill}", masks, desc, instructions[skill][:8], [skill]))
        else:
            for part in cluster_neurons(prof, k):
                desc = f"Emergent FFN partition {part.index} of {k} (co-activation cluster); drives: " + "; ".join(
                    p.splitlines()[0] for p in part.top_prompts[:3])
                found.append((f"{prefix}p{part.index}", part.masks, desc,
                              [p.splitlines()[0] for p in part.top_prompts], []))
        written = []
        with tempfile.TemporaryDirectory(dir=lib.path) as tmp:
            for brick_id, masks, desc, examples, sk in found:
                folder = write_mask_brick(Path(tmp) / brick_id, masks, brick_id=brick_id, description=desc,
                                          examples=examples, base_model=lib.base_model, skills=sk,
                                          metrics={"density": round(mask_density(masks, L, I), 4)})
                written.append(lib.add(folder))
        open_planner(lib.path)  # brings the index up to date
    except user_errors() as e:
        fail(first_line(e))
    for b in written:
        typer.echo(f"{b.key}  density {b.manifest.metrics['density']:.3f}  {b.manifest.description[:80]}")


@app.command()
def analyze(data: Path = typer.Option(..., "--data", help="JSONL rows (instruction, input, output, skills)."),
            out: Path = typer.Option(..., "--out", help="Folder for the PNG plots and summary.md."),
            model: Optional[Path] = ModelOpt,
            budget: float = typer.Option(0.05, "--budget", help="Ablation brick size per layer."),
            keep_budget: float = typer.Option(0.3, "--keep-budget", help="Keep-only brick size: share of all "
                                                                         "FFN neurons (ranked across layers)."),
            keep_criterion: str = typer.Option("attribution", "--keep-criterion",
                                               help="How keep-only bricks rank neurons: attribution | active | "
                                                    "contribution | specific."),
            k: int = typer.Option(8, "--k", help="Neuron clusters for the specialization heatmap."),
            limit: int = typer.Option(100, "--limit", help="Evaluation rows per skill."),
            skills: Optional[str] = typer.Option(None, "--skills", help="Comma-separated skills to keep."),
            profile_data: Optional[Path] = typer.Option(None, "--profile-data",
                                                        help="Rows to profile (default: the even rows of --data).")) -> None:
    """Activation sparsity, skill x cluster specialization, ablation and keep-only matrices (PNG + markdown)."""
    from orchestrator.analysis import run_analysis
    from orchestrator.factory import model_dir

    try:
        summary = run_analysis(model_dir(model), data, out, budget=budget, keep_budget=keep_budget, k=k,
                               limit=limit, skill_prompts=_skill_prompts, profile=_profile, only=skills,
                               profile_data=profile_data, keep_criterion=keep_criterion)
    except user_errors() as e:
        fail(first_line(e))
    typer.echo(json.dumps(summary["bars"], indent=2))
    typer.echo(f"wrote {out / 'summary.md'}")
