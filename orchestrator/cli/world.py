"""CLI commands for the toy world and for evaluation: `brickwork toyworld build`, `brickwork eval`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from orchestrator.cli.root import DeviceOpt, LibraryOpt, ModelOpt, app, fail, user_errors

__all__ = ["toyworld_app"]

toyworld_app = typer.Typer(no_args_is_help=True, help="Build the toy world (model, data, bricks) from seeds.")
app.add_typer(toyworld_app, name="toyworld")


PROGRESS_ROWS = 128  # eval --pipeline runs its rows in slices of this many, so the bar moves as rows finish


def row_progress(label: str, total: int, *, transient: bool = True):
    """A rich progress bar by rows, on stderr (stdout keeps the answer, the table or the JSON)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=transient)
    return bar, bar.add_task(label, total=total)


@toyworld_app.command("build")
def toyworld_build(out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: the shipped world, "
                                                                         "with --overwrite-shipped)."),
                   quick: bool = typer.Option(False, "--quick", help="A CI-sized run of the same pipeline."),
                   seed: int = typer.Option(0, "--seed"),
                   work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="Checkpoints (for resuming)."),
                   overwrite_shipped: bool = typer.Option(False, "--overwrite-shipped",
                                                          help="Regenerate the shipped world in place.")) -> None:
    """Regenerate the toy world: splits, tokenizer, base model, LoRA bricks, emergent bricks, library and index."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from bricks.toyworld.build import BuildConfig, build_world
    from bricks.toyworld.paths import WORLD_DIR

    target = out or WORLD_DIR
    if target.resolve() == Path(WORLD_DIR).resolve() and not overwrite_shipped:
        fail(f"toyworld build would overwrite the shipped world at {str(WORLD_DIR)!r}; give --out DIR for a new "
             "one, or --overwrite-shipped to regenerate it in place")
    cfg = BuildConfig.quick(seed) if quick else BuildConfig(seed=seed)
    tasks: dict[str, int] = {}
    t0 = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn()) as bar:
        def progress(stage: str, done: int, total: int, loss: float | None) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, loss="")
            bar.update(tasks[stage], completed=done, loss=f"loss {loss:.4f}" if loss is not None else "")

        try:
            report = build_world(target, cfg, progress=progress, work_dir=work_dir)
        except user_errors() as e:
            fail(str(e))
    _index_world(target)
    typer.echo(json.dumps({"out": str(target), "seconds": round(time.perf_counter() - t0, 1),
                           "size_bytes": report["size_bytes"], "base_exact_match_test": report["base_exact_match_test"],
                           "bricks": {k: v["exact_match_test"] for k, v in report["bricks"].items()},
                           "emergent_bricks": {k: {"retention_validation": v.get("retention_validation"),
                                                   "added": bool(v["added"])}
                                               for k, v in report.get("emergent_bricks", {}).items()}}, indent=2))


def _index_world(world: Path) -> None:
    """Ship the library with its index built, so a first run does not embed anything."""
    from orchestrator.factory import open_planner

    open_planner(world / "library")


@app.command("eval")
def evaluate(model: Optional[Path] = ModelOpt, library: Optional[Path] = LibraryOpt,
             brick: Optional[str] = typer.Option(None, "--brick", help="A brick id of the library, or a brick folder."),
             split: str = typer.Option("test", "--split", help="train | validation | test (toy world splits)."),
             kind: str = typer.Option("single", "--kind",
                                      help="single | compound (toy world splits) | paraphrase (unseen phrasings) | "
                                           "hard | hard2 (synonyms, jargon, indirect, misspelt; never fitted on; hard2 "
                                           "written in a clean room)."),
             data: Optional[Path] = typer.Option(None, "--data", help="A JSONL of rows instead of a toy world split."),
             skills: Optional[str] = typer.Option(None, "--skills", help="Comma-separated skill ids to keep."),
             limit: int = typer.Option(0, "--limit", help="At most this many rows per skill (0: all)."),
             pipeline: bool = typer.Option(False, "--pipeline",
                                           help="Run rows through the orchestrator (decompose, route, chain)."),
             canonical: Optional[bool] = typer.Option(None, "--canonical/--no-canonical",
                                                      help="Show the model the nearest trained phrasing "
                                                           "(default: as the library says)."),
             decomposer: str = typer.Option("rules", "--decomposer", help="rules | single | model | model:PATH"),
             emergent: bool = typer.Option(True, "--emergent/--no-emergent",
                                           help="With --pipeline: route base-skill steps to emergent bricks whose "
                                                "retention reaches the policy's emergent_min_retention (default), "
                                                "or keep them on the whole base model."),
             retrieval: str = typer.Option("dense", "--retrieval",
                                           help="With --pipeline: dense | hybrid (dense + BM25, rank fusion)."),
             router: str = typer.Option("brickwork", "--router",
                                        help="With --pipeline: brickwork (plan, route, chain) | arrow (PEFT's "
                                             "training-free per-token Arrow over the library's LoRA bricks, one "
                                             "prompt a row), a baseline."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON for machines."),
             device: str = DeviceOpt) -> None:
    """Exact-match accuracy per skill, for the base model alone or with one LoRA brick."""
    from bricks.device import resolve_device
    from bricks.model_io import load_model, load_tokenizer
    from bricks.rows import read_rows
    from bricks.toyworld.dataset import split_path
    from bricks.toyworld.paths import world_data_dir
    from bricks.toyworld.skills import get_skill
    from orchestrator.evaluation import per_chain
    from orchestrator.factory import model_dir as resolve_model

    try:
        device = resolve_device(device)  # a GPU that is not there: one line, before any row is read
        if split not in ("train", "validation", "test") or kind not in ("single", "compound", "paraphrase", "hard",
                                                                       "hard2"):
            fail(f"unknown split/kind {split!r}/{kind!r}; expected train|validation|test and "
                 "single|compound|paraphrase|hard|hard2")
        if retrieval not in ("dense", "hybrid"):
            fail(f"unknown retrieval {retrieval!r}; expected dense or hybrid")
        from orchestrator.arrow_baseline import ROUTERS

        if router not in ROUTERS:
            fail(f"unknown router {router!r}; expected {' or '.join(ROUTERS)}")
        if router != "brickwork" and not pipeline:
            fail(f"--router {router} applies with --pipeline")
        wanted = [get_skill(s.strip()).id for s in skills.split(",")] if skills else None
        if kind == "paraphrase" and data is None:
            from bricks.toyworld.paraphrases import paraphrase_rows

            path = Path("paraphrase-test")
            rows = [r.to_json() for r in paraphrase_rows()]
        elif kind in ("hard", "hard2") and data is None:
            from bricks.toyworld.paraphrases import hard_paraphrase_rows

            path = Path(f"{kind}-paraphrase-test")
            rows = [r.to_json() for r in hard_paraphrase_rows(version=1 if kind == "hard" else 2)]
        else:
            path = data or split_path(world_data_dir(), kind, split)  # type: ignore[arg-type]
            rows = [r.as_dict() for r in read_rows(path)]
        if wanted:
            rows = [r for r in rows if set(r["skills"]) & set(wanted)]
        rows = per_chain(rows, limit)
        model_dir = resolve_model(model)
        brick_path = None
        plans = arrow = None
        if pipeline and router == "arrow":
            scores, arrow = _arrow_scores(model_dir, library, rows, device=device)
        elif pipeline:
            scores, plans = _pipeline_scores(model_dir, library, rows, canonical, decomposer, emergent, retrieval,
                                             device=device)
        else:
            tokenizer, net = load_tokenizer(model_dir), load_model(model_dir, device=device)
            brick_path = _brick_path(brick, library, net) if brick else None
            if brick_path:
                from peft import PeftModel

                net = PeftModel.from_pretrained(net, str(brick_path), is_trainable=False).eval()
            scores = _model_scores(net, tokenizer, rows)
    except user_errors() as e:
        fail(str(e))
    payload = {"model": str(model_dir), "brick": str(brick_path) if brick_path else None, "data": str(path),
               "pipeline": pipeline, "router": router if pipeline else None, "plans": plans,
               **({"arrow": arrow} if arrow else {}),
               "scores": {k: {"correct": v.correct, "total": v.total, "accuracy": round(v.accuracy, 4)}
                          for k, v in scores.items()}}
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    who = ("arrow" if arrow else "orchestrator") if pipeline else payload["brick"] or "base model"
    table = Table(title=f"exact match: {who} on {path.name}")
    for col in ("skill", "correct", "total", "accuracy"):
        table.add_column(col)
    for k, v in scores.items():
        table.add_row(k, str(v.correct), str(v.total), f"{v.accuracy:.1%}")
    Console().print(table)
    if arrow:
        Console().print(f"arrow over {', '.join(arrow['bricks'])} (top_k {arrow['top_k']}, temperature "
                        f"{arrow['router_temperature']}), exact match {arrow['exact_match']:.1%}")
    if plans:
        Console().print(f"plans correct {plans['plans_correct']}/{plans['plans']} ({plans['plan_accuracy']:.1%}), "
                        f"steps routed right {plans['steps_correct']}/{plans['steps']} "
                        f"({plans['routing_accuracy']:.1%}), exact match {plans['exact_match']:.1%}")


def _model_scores(net, tokenizer, rows: list[dict], batch_size: int = 256):
    """Exact match per skill of the model alone (greedy, 40 new tokens), generated in batches with a bar by rows."""
    from bricks.evaluation import score_outputs
    from bricks.generation import generate_texts
    from bricks.prompt import DEFAULT_TEMPLATE

    outputs: list[str] = []
    bar, task = row_progress("eval", len(rows))
    with bar:
        for i in range(0, len(rows), batch_size):
            part = rows[i:i + batch_size]
            outputs += generate_texts(net, tokenizer, [DEFAULT_TEMPLATE.render(r["instruction"], r.get("input", ""))
                                                       for r in part], max_new_tokens=40, batch_size=batch_size)
            bar.update(task, advance=len(part))
    return score_outputs(rows, outputs)


def _pipeline_scores(model_dir: Path, library: Optional[Path], rows: list[dict], canonical: Optional[bool],
                     decomposer: str, emergent: bool = True, retrieval: str = "dense", device: str = "auto"):
    """Exact match per skill chain, and plan correctness, when an Orchestrator plans, routes and runs every row."""
    from bricks.evaluation import score_outputs
    from orchestrator.api import Orchestrator
    from orchestrator.evaluation import expected_routes, plan_correctness

    with Orchestrator.from_pretrained(model_dir, library, decomposer=decomposer, device=device) as orc:
        if canonical is not None:
            orc.planner.canonical = canonical
        import dataclasses

        if not emergent and getattr(orc.planner.routing, "emergent_min_retention", None) is not None:
            orc.planner.routing = dataclasses.replace(orc.planner.routing, emergent_min_retention=None)
        if retrieval != getattr(orc.planner.routing, "retrieval", "dense"):
            orc.planner.routing = dataclasses.replace(orc.planner.routing, retrieval=retrieval)
        results = []
        bar, task = row_progress("eval", len(rows))
        with bar:
            for i in range(0, len(rows), PROGRESS_ROWS):
                results += orc.run_batch(rows[i:i + PROGRESS_ROWS])
                bar.update(task, advance=len(rows[i:i + PROGRESS_ROWS]))
        routes = expected_routes(orc.planner.library,
                                 emergent_min_retention=getattr(orc.planner.routing, "emergent_min_retention", None))
        ps = plan_correctness(rows, [r.plan for r in results], routes)
    exact = sum(r.output == row["output"] for r, row in zip(results, rows)) / max(1, len(rows))
    plans = {"plans_correct": ps.plans_correct, "plans": ps.plans, "plan_accuracy": round(ps.plan_accuracy, 4),
             "steps_correct": ps.steps_correct, "steps": ps.steps, "routing_accuracy": round(ps.routing_accuracy, 4),
             "exact_match": round(exact, 4)}
    return score_outputs(rows, [res.output for res in results]), plans


def _arrow_scores(model_dir: Path, library: Optional[Path], rows: list[dict], device: str = "auto"):
    """Exact match per skill of PEFT's Arrow over the library's LoRA bricks (`orchestrator.arrow_baseline`)."""
    from orchestrator.arrow_baseline import arrow_scores

    bar, task = row_progress("eval (arrow)", len(rows))
    with bar:
        return arrow_scores(model_dir, library, rows, device=device,
                            progress=lambda n: bar.update(task, advance=n))


def _brick_path(brick: str, library: Optional[Path], model) -> Path:
    """A brick folder, from a path or from an id in the library, validated against the model."""
    from bricks.kinds import get_kind
    from bricks.library import Brick
    from bricks.lora import LoraBrick
    from bricks.manifest import BrickManifest
    from orchestrator.factory import open_library

    folder = Path(brick)
    if (folder / "brick.json").is_file():
        found = Brick(manifest=BrickManifest.from_file(folder / "brick.json"), path=folder.resolve())
    else:
        found = open_library(library).get(brick)
    if get_kind(found.kind).role != "adapter":
        fail(f"brick {brick!r} is of kind {found.kind}; eval applies LoRA (adapter) bricks")
    LoraBrick.from_dir(found.path, found.manifest).check_fits(model.config)
    return found.path
