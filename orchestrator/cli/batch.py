"""`brickwork batch IN -o OUT`: run every row of a JSONL, CSV or Parquet file, resumably, locally or on Ray."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer

from orchestrator.cli.root import DeviceOpt, LibraryOpt, ModelOpt, app, executor_options, fail, first_line, user_errors

__all__ = ["batch", "report_rows"]

PROGRESS_ROWS = 128  # with a progress bar, a chunk's rows run in slices of this many, so the bar moves as rows finish


def _progress_bar():
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("batch"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=False)


def report_rows(orc, on_rows: Callable[[int], None], rows: int = PROGRESS_ROWS) -> None:
    """Make `orc.run_batch` (this instance only) run its tasks in slices of `rows`, calling `on_rows(n)` after each
    slice, so a progress bar moves within a chunk, not once per chunk. Outputs are the same (the executors give a
    request the same output whatever batch it shares); only the slices' steps share executor batches."""
    whole = orc.run_batch

    def sliced(tasks):
        tasks, results = list(tasks), []
        for i in range(0, len(tasks), rows):
            part = whole(tasks[i:i + rows])
            results += part
            on_rows(len(part))
        return results

    orc.run_batch = sliced


def _print_summary(summary, as_json: bool) -> None:
    data = summary.as_dict()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    acc = f", accuracy {data['accuracy']:.1%} on {data['gold_rows']} gold rows" if data["accuracy"] is not None else ""
    typer.echo(f"rows {data['rows']} (written now {data['written']}, already done {data['skipped']}), "
               f"errors {data['errors']}, {data['rows_per_s']:.2f} rows/s over {data['seconds']:.1f} s{acc}")
    usage = ", ".join(f"{k} {v}" for k, v in data["brick_usage"].items()) or "none"
    typer.echo(f"bricks used (steps): {usage}")
    typer.echo(f"output: {data['output']}")


@app.command()
def batch(input_path: Path = typer.Argument(..., metavar="IN", help="JSONL, CSV or Parquet rows: id, instruction, "
                                                                     "optional input and gold output."),
          out: Path = typer.Option(..., "--out", "-o", help="Output JSONL (id, output, steps, error); resumed if it "
                                                            "exists and belongs to this job."),
          fmt: Optional[str] = typer.Option(None, "--format", help="jsonl | csv | parquet (default: from the suffix)."),
          engine: str = typer.Option("local", "--engine", help="local | ray"),
          chunk_size: int = typer.Option(1024, "--chunk-size",
                                         help="Rows planned and run together (a resumed chunk is rerun whole)."),
          workers: int = typer.Option(2, "--workers", help="Ray worker actors (one Orchestrator each)."),
          address: Optional[str] = typer.Option(None, "--address",
                                                help="Ray cluster address (default: start a local Ray)."),
          cpus_per_worker: float = typer.Option(1.0, "--cpus-per-worker"),
          gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker"),
          model: Optional[Path] = ModelOpt, library: Optional[Path] = LibraryOpt,
          executor: str = typer.Option("transformers", "--executor", help="transformers | vllm"),
          device: str = DeviceOpt,
          as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar.")) -> None:
    """Run every row of IN and append one row per id to OUT; a rerun resumes where the last run stopped.

    One job at a time per OUT (a second one is refused, naming the first one's pid); the library is pinned
    while the job runs, and a brick removed meanwhile stops it (the rows written are kept; rerun to resume).
    """
    from bricks.fingerprint import check_base_model
    from orchestrator.factory import model_dir, open_library
    from orchestrator.integrations.batch import BatchError, BatchJob, run_local

    if engine not in ("local", "ray"):
        fail(f"unknown engine {engine!r}; expected local or ray")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        if engine == "local":  # checked here, before OUT is claimed; Ray workers check their own devices
            options = executor_options(executor, device)
        else:
            options = {"device": device} if executor == "transformers" and device != "auto" else {}
        lib = open_library(library)
        check_base_model(model_dir(model), lib.base_model, lib.path)  # before OUT is claimed for this model
        if engine == "ray":
            from orchestrator.integrations.ray import import_ray

            import_ray()  # a missing extra stops here, before the output is claimed or any model loads
        job = BatchJob.open(input_path, out, model=model, library=library, fmt=fmt, chunk_size=chunk_size)
    except (BatchError, *user_errors()) as e:
        fail(first_line(e))
    bad = sum(r.error is not None for r in job.input.rows)
    if bad and not quiet:
        first = next(r.error for r in job.input.rows if r.error)
        typer.echo(f"{bad} row(s) cannot run and become error rows (first: {first})", err=True)
    if job.done and not quiet:
        typer.echo(f"resuming: {len(job.done)} of {len(job.input.rows)} rows already in {out}", err=True)
    bar = None if quiet or as_json else _progress_bar()
    task = None
    written = {"chunks": 0, "slices": 0}  # rows written by finished chunks; rows run since, in the current chunk

    def show() -> None:
        if bar is None or task is None:
            return
        done = min(written["chunks"] + written["slices"], bar.tasks[task].total or 0)
        elapsed = bar.tasks[task].elapsed or 0.0
        bar.update(task, completed=done, rate=f"{done / elapsed:.1f} rows/s" if elapsed > 0 and done else "")

    def progress(done: int, total: int) -> None:
        nonlocal task
        if bar is None:
            return
        if task is None:
            task = bar.add_task("batch", total=total, rate="")
        written.update(chunks=done, slices=0)
        show()

    def rows_done(n: int) -> None:
        written["slices"] += n
        show()

    try:
        if bar is not None:
            bar.start()
        if job.remaining == 0:
            summary = run_local(job, None, progress=progress)
        elif engine == "ray":
            from orchestrator.integrations.ray import run_ray

            summary = run_ray(job, model=model, library=library, executor=executor, workers=workers,
                              address=address, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                              progress=progress, executor_options=options)
        else:
            from orchestrator.api import Orchestrator

            with Orchestrator.from_pretrained(model, library, executor, **options) as orc:
                if bar is not None:
                    report_rows(orc, rows_done, max(1, min(PROGRESS_ROWS, chunk_size)))
                summary = run_local(job, orc, progress=progress)
    except KeyboardInterrupt:
        if bar is not None:
            bar.stop()
        typer.echo(f"interrupted: {len(job.done)} of {len(job.input.rows)} rows are in {out}; "
                   "run the same command again to resume", err=True)
        raise typer.Exit(130)
    except (BatchError, *user_errors()) as e:
        if bar is not None:
            bar.stop()
        fail(first_line(e))
    finally:
        job.close()  # the output's lock (the OS drops it anyway if this process is killed)
    if bar is not None:
        bar.stop()
    _print_summary(summary, as_json)
