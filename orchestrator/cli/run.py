"""The `brickwork` commands that use a library as it is: run, plan, calibrate, info, bricks list/show, index build."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from orchestrator.cli.root import (
    DeviceOpt,
    LibraryOpt,
    ModelOpt,
    app,
    bricks_app,
    executor_options,
    fail,
    first_line,
    index_app,
    user_errors,
)


def _orchestrator(model, library, executor: str, device: str = "auto"):
    from orchestrator.api import Orchestrator

    return Orchestrator.from_pretrained(model, library, executor, **executor_options(executor, device))


def _emit_result(result, as_json: bool) -> None:
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    table = Table(title=f"plan: {len(result.steps)} step(s)")
    for col in ("#", "instruction", "input", "bricks", "output"):
        table.add_column(col)
    for s in result.steps:
        bricks = ", ".join(f"{b.key} ({b.score:.2f})" if b.score is not None else b.key for b in s.bricks) or "base"
        table.add_row(str(s.index), escape(s.instruction), escape(s.input), bricks,
                      escape(s.output) if s.error is None else f"[red]failed: {escape(s.error)}[/red]")
    console.print(table)
    if result.error is None:
        console.print(f"[bold]output:[/bold] {escape(result.output)}")


@app.command()
def run(instruction: Optional[str] = typer.Argument(None, help="What to do."),
        input: Optional[str] = typer.Option(None, "--input", "-i", help="The task's input text."),
        plan_file: Optional[Path] = typer.Option(None, "--plan", help="Run this plan JSON instead of planning."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        model: Optional[Path] = ModelOpt, library: Optional[Path] = LibraryOpt,
        executor: str = typer.Option("transformers", "--executor", help="transformers | vllm"),
        device: str = DeviceOpt) -> None:
    """Plan and run an instruction; print the answer and the plan. Exit status 1 when a step fails."""
    from orchestrator.factory import open_library
    from orchestrator.plan import Plan
    from orchestrator.validation import check_text

    try:
        executor_options(executor, device)  # a GPU that is not there: one line, before the plan or any file
        if plan_file is not None and not plan_file.is_file():
            fail(f"--plan {str(plan_file)!r} is {'a directory' if plan_file.is_dir() else 'missing'}; "
                 "expected a plan JSON file")
        plan = Plan.from_json(plan_file.read_bytes()) if plan_file else None
        if plan is None and instruction is None:
            fail("give an INSTRUCTION or --plan FILE")
        if plan is None:
            check_text(instruction, "instruction")
        if plan is None and input is None and open_library(library).config.input_required:
            fail(f"{instruction!r} needs an input: give --input TEXT (--input '' runs on an empty one)")
        with _orchestrator(model, library, executor, device) as orc:
            result = orc.run_plan(plan) if plan else orc.run(instruction, input)
    except user_errors() as e:
        fail(first_line(e))
    _emit_result(result, as_json)
    if result.error:
        typer.echo(f"error: {result.error}", err=True)
        raise typer.Exit(1)


@app.command()
def plan(instruction: str = typer.Argument(..., help="What to do."),
         input: str = typer.Option("", "--input", "-i"),
         as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
         library: Optional[Path] = LibraryOpt) -> None:
    """Print the plan for an instruction without running any model."""
    from orchestrator.factory import open_planner

    try:
        result = open_planner(library).plan(instruction, input)
    except user_errors() as e:
        fail(str(e))
    if as_json:
        typer.echo(result.to_json(indent=2))
        return
    for i, step in enumerate(result.steps):
        bricks = ", ".join(b.key for b in step.config.bricks) or "base"
        src = "task input" if step.input_from is None else f"step {step.input_from}"
        typer.echo(f"{i}. {step.instruction}  [{bricks}]  <- {src}  ({step.route})")


@bricks_app.command("list")
def bricks_list(library: Optional[Path] = LibraryOpt, as_json: bool = typer.Option(False, "--json")) -> None:
    """List the bricks of a library."""
    from orchestrator.factory import open_library

    try:
        lib = open_library(library)
    except user_errors() as e:
        fail(str(e))
    rows = [{"id": b.id, "version": b.version, "kind": b.kind, "description": b.manifest.description,
             "metrics": b.manifest.metrics} for b in lib.list()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{len(rows)} brick(s) in {escape(str(lib.path))}")
    for col in ("brick", "kind", "description", "metrics"):
        table.add_column(col, overflow="fold")
    for r in rows:
        shown = ", ".join(f"{k} {v:g}" for k, v in sorted(r["metrics"].items()) if k.startswith("exact_match"))
        table.add_row(f"{r['id']}@{r['version']}", r["kind"], escape(r["description"]), shown)
    Console().print(table)
    for folder, reason in lib.skipped:
        typer.echo(f"skipped {folder}: {reason}", err=True)


@bricks_app.command("show")
def bricks_show(brick_id: str = typer.Argument(...), library: Optional[Path] = LibraryOpt) -> None:
    """Print a brick's manifest."""
    from orchestrator.factory import open_library

    try:
        brick = open_library(library).get(brick_id)
    except user_errors() as e:
        fail(str(e))
    typer.echo(brick.manifest.model_dump_json(indent=2))


@index_app.command("build")
def index_build(library: Optional[Path] = LibraryOpt) -> None:
    """(Re)build the brick index of a library and save it beside the library."""
    from index import BrickIndex, SentenceTransformerEmbedder, save
    from orchestrator.factory import open_library
    from orchestrator.library_index import index_fingerprint, library_documents

    try:
        lib = open_library(library)
        docs = library_documents(lib)
        idx = BrickIndex.build(docs, SentenceTransformerEmbedder(), source_fingerprint=index_fingerprint(lib))
        save(idx, Path(lib.path) / "index")
    except user_errors() as e:
        fail(str(e))
    typer.echo(f"indexed {len(docs)} documents ({len(idx)} vectors) into {Path(lib.path) / 'index'}")


@app.command()
def calibrate(data: Path = typer.Option(..., "--data", help="Labeled JSONL: instruction + brick (id/null) or skills."),
              library: Optional[Path] = LibraryOpt,
              check: Optional[Path] = typer.Option(None, "--check", help="Labeled JSONL to measure on (default: --data)."),
              save: bool = typer.Option(True, "--save/--dry-run", help="Write <library>/routing.json."),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Fit per-brick routing thresholds; report routing precision/recall before and after."""
    from orchestrator.calibrate import calibrate as fit
    from orchestrator.calibrate import read_labeled, save_thresholds
    from orchestrator.factory import open_planner

    try:
        planner = open_planner(library)
        held_out = read_labeled(check, planner.library) if check is not None else None
        cal = fit(planner, read_labeled(data, planner.library), check=held_out)
        measured = {"before": cal.before, "after": cal.after}
        path = save_thresholds(planner.library.path, cal, str(data)) if save else None
    except user_errors() as e:
        fail(str(e))
    report = {"thresholds": cal.thresholds, "default": cal.default, "fitted_steps": cal.steps,
              "measured_on": str(check or data), "saved_to": str(path) if path else None,
              **{k: {"accuracy": round(m.accuracy, 4), "macro_precision": round(m.macro_precision, 4),
                     "macro_recall": round(m.macro_recall, 4),
                     "precision": {b: round(v, 4) for b, v in m.precision.items()},
                     "recall": {b: round(v, 4) for b, v in m.recall.items()}} for k, m in measured.items()}}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    for k in ("before", "after"):
        r = report[k]
        typer.echo(f"{k:6} accuracy {r['accuracy']:.3f}  macro precision {r['macro_precision']:.3f}  "
                   f"macro recall {r['macro_recall']:.3f}")
    typer.echo("thresholds: " + ", ".join(f"{b}={t}" for b, t in cal.thresholds.items()))
    if path:
        typer.echo(f"saved to {path}")


@app.command()
def info(as_json: bool = typer.Option(False, "--json"), model: Optional[Path] = ModelOpt,
         library: Optional[Path] = LibraryOpt) -> None:
    """Which model, library, index and embedder brickwork uses, and where they live."""
    from orchestrator.factory import describe

    try:
        data = describe(model, library)
    except user_errors() as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        for k, v in data.items():
            typer.echo(f"{k:14} {v}")
