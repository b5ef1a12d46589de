"""`brickwork bricks discover` and `brickwork analyze`: emergent bricks from a model's own FFN neurons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from bricks.emergent.quality import DEFAULT_MIN_RETENTION, DEFAULT_MIN_SUPPORT, RETENTION_METRIC
from bricks.errors import ConfigError
from orchestrator.cli.root import DeviceOpt, LibraryOpt, ModelOpt, app, bricks_app, fail, first_line, user_errors

__all__ = ["discover", "analyze"]


def _skill_prompts(path: Path, skills: Optional[str]) -> tuple[list[tuple[str, str, str]], dict[str, list[str]]]:
    """(skill, prompt, answer) of single-skill rows, and each skill's distinct instructions."""
    from bricks.emergent.pipeline import skill_examples
    from bricks.rows import read_rows

    pairs, instructions = skill_examples(read_rows(path, require_output=False), _wanted(skills))
    if not pairs:
        raise ConfigError(f"{path}: no single-skill rows (rows need `skills` with one skill id)")
    return pairs, instructions


def _wanted(skills: Optional[str]) -> set[str] | None:
    return {s.strip() for s in skills.split(",") if s.strip()} if skills else None


def _profile(model_dir: Path, examples, progress_label: str, *, attribution: bool = False, device: str = "auto"):
    """Load the model (on `device`) and profile its neurons on (skill, prompt, answer) examples (prompt + answer
    streamed); with `attribution`, also score the neurons by gold-answer attribution (`profile.attribution`)."""
    from bricks.model_io import load_model, load_tokenizer

    model, tok = load_model(model_dir, device=device), load_tokenizer(model_dir)
    return model, tok, _profiled(model, tok, examples, progress_label, attribution=attribution)


def _profiled(model, tok, examples, label: str, *, attribution: bool):
    from rich.progress import Progress

    from bricks.emergent.pipeline import profile_skills

    with Progress(transient=True) as bar:
        tasks: dict[str, object] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(label if stage == "profiling" else stage, total=total)
            bar.update(tasks[stage], completed=done)

        return profile_skills(model, tok, examples, attribution=attribution, on_progress=progress)


@bricks_app.command("discover")
def discover(data: Path = typer.Option(..., "--data", help="JSONL rows with instruction, input, output, skills."),
             model: Optional[Path] = ModelOpt, library: Optional[Path] = LibraryOpt,
             mode: str = typer.Option("supervised", "--mode", help="supervised (one brick per skill) | unsupervised"),
             budget: float = typer.Option(0.3, "--budget", help="Share of neurons per brick: of each layer "
                                                                 "(--scope layer) or of all (global)."),
             criterion: str = typer.Option("attribution", "--criterion",
                                           help="attribution | specific | active | contribution (supervised; "
                                                "attribution: |activation x gradient| of the gold answers' loss, "
                                                "best for keep-only bricks with --scope global)."),
             scope: str = typer.Option("global", "--scope", help="global (budget of all neurons) | layer "
                                                                 "(budget of each layer) (supervised)."),
             k: int = typer.Option(8, "--k", help="Number of partitions (unsupervised)."),
             skills: Optional[str] = typer.Option(None, "--skills", help="Comma-separated skills to keep."),
             prefix: str = typer.Option("emergent-", "--prefix", help="Brick id prefix."),
             holdout: Optional[Path] = typer.Option(None, "--holdout", help="Held-out rows to measure retention on "
                                                    "(default: every 5th row of each skill in --data, not profiled)."),
             holdout_limit: int = typer.Option(0, "--holdout-limit", help="At most this many held-out rows per "
                                                                          "skill (0: all)."),
             min_retention: float = typer.Option(DEFAULT_MIN_RETENTION, "--min-retention",
                                                 help="Quality gate: the share of the base model's right answers "
                                                      "on held-out rows a brick must keep (keep-only) to be added."),
             min_support: int = typer.Option(DEFAULT_MIN_SUPPORT, "--min-support",
                                             help="Quality gate: at least this many held-out rows the base model "
                                                  "answers right to measure a brick on."),
             keep_failing: bool = typer.Option(False, "--keep-failing", help="Add bricks that fail the gate "
                                                                             "too, marked not routable."),
             device: str = DeviceOpt) -> None:
    """Profile the model's FFN neurons on DATA, measure each candidate brick keep-only on held-out rows, and add
    the ones that keep at least --min-retention of the base model's right answers to the library."""
    from bricks.device import resolve_device
    from bricks.emergent.discover import CRITERIA
    from bricks.emergent.pipeline import (
        add_candidates,
        gate_candidates,
        gate_failure,
        partition_candidates,
        skill_candidates,
        split_holdout,
    )
    from bricks.model_io import load_model, load_tokenizer
    from bricks.rows import read_rows
    from orchestrator.factory import model_dir, open_library, open_planner

    try:
        device = resolve_device(device)  # a GPU that is not there: one line, before the rows are read
        if mode not in ("supervised", "unsupervised"):
            raise ConfigError(f"unknown mode {mode!r}; expected supervised or unsupervised")
        if mode == "supervised" and criterion not in CRITERIA:
            raise ConfigError(f"unknown criterion {criterion!r}; expected one of {', '.join(CRITERIA)}")
        if not 0.0 <= min_retention <= 1.0:
            raise ConfigError(f"--min-retention {min_retention} must be in [0, 1]")
        if holdout_limit < 0:
            raise ConfigError(f"--holdout-limit {holdout_limit} must be >= 0")
        lib = open_library(library)
        wanted = _wanted(skills)
        rows = [r for r in read_rows(data) if len(r.skills) == 1 and (not wanted or r.skills[0] in wanted)]
        if holdout is None:
            rows, held = split_holdout(rows)
        else:
            held = [r for r in read_rows(holdout) if len(r.skills) == 1 and (not wanted or r.skills[0] in wanted)]
        pairs, instructions = _skill_prompts_of(rows, data)
        net, tok = load_model(model_dir(model), device=device), load_tokenizer(model_dir(model))
        prof = _profiled(net, tok, pairs, "profiling", attribution=mode == "supervised" and criterion == "attribution")
        if mode == "supervised":
            found = skill_candidates(net, prof, instructions, budget=budget, criterion=criterion, scope=scope,
                                     prefix=prefix)
        else:
            found = partition_candidates(prof, k, prefix)
        gated = gate_candidates(net, tok, found, held, limit_per_skill=holdout_limit or None)
        written, refused = add_candidates(lib, gated, min_retention=min_retention, min_support=min_support,
                                          keep_failing=keep_failing)
        open_planner(lib.path)  # brings the index up to date
    except user_errors() as e:
        fail(first_line(e))
    for b in written:
        m = b.manifest.metrics
        kept = f"  retention {m[RETENTION_METRIC]:.4f}" if RETENTION_METRIC in m else ""
        note = "  NOT ROUTABLE" if getattr(b.manifest, "routable", True) is False else ""
        typer.echo(f"{b.key}  density {m['density']:.3f}{kept}{note}  {b.manifest.description[:80]}")
    for c in refused:
        typer.echo(f"{'kept, not routable' if keep_failing else 'refused'}: {c.brick_id}: "
                   f"{gate_failure(c, min_retention, min_support)}", err=True)


def _skill_prompts_of(rows, data: Path):
    from bricks.emergent.pipeline import skill_examples

    pairs, instructions = skill_examples(rows)
    if not pairs:
        raise ConfigError(f"{data}: no single-skill rows to profile (rows need `skills` with one skill id)")
    return pairs, instructions


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
                                                        help="Rows to profile (default: the even rows of --data)."),
            device: str = DeviceOpt) -> None:
    """Activation sparsity, skill x cluster specialization, ablation and keep-only matrices (PNG + markdown)."""
    from bricks.device import resolve_device
    from orchestrator.analysis import run_analysis
    from orchestrator.factory import model_dir

    try:
        summary = run_analysis(model_dir(model), data, out, budget=budget, keep_budget=keep_budget, k=k,
                               limit=limit, skill_prompts=_skill_prompts, profile=_profile, only=skills,
                               profile_data=profile_data, keep_criterion=keep_criterion,
                               device=resolve_device(device))
    except user_errors() as e:
        fail(first_line(e))
    typer.echo(json.dumps(summary["bars"], indent=2))
    typer.echo(f"wrote {out / 'summary.md'}")
