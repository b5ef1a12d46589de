"""CLI commands for the brick lifecycle: `brickwork bricks train | update | add | import-peft | remove | rollback |
versions | verify`.

Every change goes through `bricks.Library` (temp folder, rename, file lock), so several writers may share a
library. The saved index is brought up to date by the next reader (only changed bricks are embedded), or at
once with `--index`; a running Orchestrator follows the library by itself.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from orchestrator.cli.root import DeviceOpt, LibraryOpt, ModelOpt, bricks_app, fail, first_line, user_errors

__all__ = ["bricks_app"]

IndexOpt = typer.Option(False, "--index/--no-index",
                        help="Also update the saved brick index now (else the next reader updates it).")
StepsOpt = typer.Option(3000, "--steps", help="Most training steps (training stops early at --target).")
LrOpt = typer.Option(4e-3, "--lr", help="Peak learning rate.")
RankOpt = typer.Option(16, "--rank", help="LoRA rank r (alpha is 2r).")
BatchOpt = typer.Option(64, "--batch-size")
TargetOpt = typer.Option(0.99, "--target", help="Stop once the held-out exact match reaches this.")
EvalEveryOpt = typer.Option(250, "--eval-every", help="Measure the held-out part every this many steps.")
SeedOpt = typer.Option(0, "--seed")
EvalDataOpt = typer.Option(None, "--eval-data", help="A JSONL test split to measure the brick on as well.")
JsonOpt = typer.Option(False, "--json", help="Print JSON for machines.")
ForceOpt = typer.Option(False, "--force", help="Add an adapter that matches the model only partly (one that "
                                               "matches nothing is always refused).")
CheckModelOpt = typer.Option(None, "--model", help="HF model folder whose config the adapter is checked against "
                                                   "(default: the toy world's model for the toy world's library; "
                                                   "else the LoRA layer-name pattern).")


def _library(library: Path | None):
    from orchestrator.factory import open_library

    return open_library(library)


def _model_dir(model: Path | None) -> Path:
    from bricks.toyworld.paths import world_model_dir

    return Path(model) if model is not None else world_model_dir()


def _check_config(model: Path | None, library: Path | None):
    """The transformers config that an added adapter is checked against: `--model`'s, the toy world model's for
    the toy world library, else None (tensor names are then checked against the LoRA layer pattern)."""
    if model is None and library is not None:
        return None
    from transformers import AutoConfig

    folder = _model_dir(model)
    try:
        return AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError) as e:
        fail(f"--model {str(folder)!r} has no readable model config ({first_line(e)})")


def _sync_index(lib, index: bool) -> None:
    if not index:
        return
    from index import SentenceTransformerEmbedder
    from orchestrator.lifecycle import sync_saved_index

    vectors, changed = sync_saved_index(lib, SentenceTransformerEmbedder())
    typer.echo(f"index {'updated' if changed else 'already up to date'}: {vectors} vectors", err=True)


def _train(*, data: Path, brick_id: str, description: str | None, examples: list[str], model: Path | None,
           library: Path | None, update: bool, continue_training: bool, eval_data: Path | None, steps: int,
           lr: float, rank: int, batch_size: int, target: float, eval_every: int, seed: int, index: bool,
           as_json: bool, device: str = "auto", grad_accum: int = 1, checkpoint_dir: Path | None = None) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from bricks.device import resolve_device
    from bricks.rows import read_rows
    from bricks.training.lora import LoraTrainConfig
    from bricks.training.trainer import BrickSpec, check_brick_id, train_brick

    try:
        device = resolve_device(device)  # a GPU that is not there: one line, before the rows are read
        lib = _library(library)
        rows = read_rows(data, require_output=True)
        eval_rows = read_rows(eval_data, require_output=True) if eval_data else []
        check_brick_id(lib, brick_id, update=update)
        if update:
            current = lib.get(brick_id).manifest
            description = description or current.description
            examples = examples or list(current.examples)
        if not description or not description.strip():
            fail("--description is required for a new brick (what the brick does, in one sentence)")
        cfg = LoraTrainConfig(r=rank, alpha=2 * rank, lr=lr, max_steps=steps, batch_size=batch_size, seed=seed,
                              target_accuracy=target, eval_every=eval_every, gradient_accumulation_steps=grad_accum,
                              checkpoint_dir=str(checkpoint_dir) if checkpoint_dir is not None else None)
        spec = BrickSpec(id=brick_id, description=description.strip(), examples=tuple(examples))
        bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                       TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                       transient=as_json)
        task = bar.add_task(f"train {brick_id}", total=steps, loss="")

        def on_step(step: int, total: int, loss: float) -> None:
            if step == 1:  # shown once training runs: checks that fail before it print one line only
                bar.start()
            bar.update(task, completed=step, loss=f"loss {loss:.4f}")

        try:
            trained = train_brick(_model_dir(model), rows, spec, lib, cfg=cfg, update=update,
                                  continue_training=continue_training, eval_rows=eval_rows, on_step=on_step,
                                  device=device)
        finally:
            bar.stop()
        _sync_index(lib, index)
    except user_errors() as e:
        fail(first_line(e))
    report = {"brick": trained.brick.key, "path": str(trained.brick.path), "steps": trained.steps,
              "seconds": trained.seconds, "metrics": trained.metrics}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        shown = ", ".join(f"{k} {v:g}" for k, v in trained.metrics.items())
        typer.echo(f"{'updated' if update else 'added'} {trained.brick.key}: {shown}")


@bricks_app.command("train")
def bricks_train(data: Path = typer.Option(..., "--data", help="Training rows JSONL: instruction, input, output."),
                 brick_id: str = typer.Option(..., "--id", help="The new brick's id."),
                 description: Optional[str] = typer.Option(None, "--description", help="What the brick does."),
                 example: Optional[list[str]] = typer.Option(None, "--example",
                                                             help="An instruction it serves (repeatable; "
                                                                  "default: the rows' most frequent)."),
                 model: Optional[Path] = ModelOpt, library: Optional[Path] = LibraryOpt,
                 eval_data: Optional[Path] = EvalDataOpt, steps: int = StepsOpt, lr: float = LrOpt,
                 rank: int = RankOpt, batch_size: int = BatchOpt, target: float = TargetOpt,
                 eval_every: int = EvalEveryOpt, seed: int = SeedOpt, index: bool = IndexOpt,
                 as_json: bool = JsonOpt, device: str = DeviceOpt,
                 grad_accum: int = typer.Option(1, "--grad-accum", help="Split each --batch-size step into this many "
                                                                       "micro-batches (gradient accumulation)."),
                 checkpoint_dir: Optional[Path] = typer.Option(None, "--checkpoint-dir",
                                                               help="Save the adapter here every --eval-every steps "
                                                                    "(default: no checkpoints).")) -> None:
    """Train a LoRA brick on rows for the library's base model (Hugging Face Trainer; bf16 on a GPU that has it),
    measure it on a held-out part, and add it."""
    _train(data=data, brick_id=brick_id, description=description, examples=example or [], model=model,
           library=library, update=False, continue_training=False, eval_data=eval_data, steps=steps, lr=lr,
           rank=rank, batch_size=batch_size, target=target, eval_every=eval_every, seed=seed, index=index,
           as_json=as_json, device=device, grad_accum=grad_accum, checkpoint_dir=checkpoint_dir)


@bricks_app.command("update")
def bricks_update(brick_id: str = typer.Argument(..., help="The brick to give a new version."),
                  data: Optional[Path] = typer.Option(None, "--data", help="Train the new version on these rows."),
                  artifact: Optional[Path] = typer.Option(None, "--artifact",
                                                          help="Or: a brick folder, or a plain PEFT LoRA folder "
                                                               "(manifest from the active version's), to add as "
                                                               "the new version."),
                  description: Optional[str] = typer.Option(None, "--description",
                                                            help="Default: the current version's."),
                  example: Optional[list[str]] = typer.Option(None, "--example", help="Default: the current version's."),
                  continue_training: bool = typer.Option(False, "--continue/--fresh",
                                                         help="Start from the active version's adapter."),
                  model: Optional[Path] = ModelOpt, library: Optional[Path] = LibraryOpt,
                  eval_data: Optional[Path] = EvalDataOpt, steps: int = StepsOpt, lr: float = LrOpt,
                  rank: int = RankOpt, batch_size: int = BatchOpt, target: float = TargetOpt,
                  eval_every: int = EvalEveryOpt, seed: int = SeedOpt, index: bool = IndexOpt,
                  as_json: bool = JsonOpt, force: bool = ForceOpt, device: str = DeviceOpt) -> None:
    """Add a new version of a brick (trained on --data, or from --artifact); it becomes active, old ones stay."""
    if (data is None) == (artifact is None):
        fail("give exactly one of --data ROWS.jsonl or --artifact FOLDER")
    if data is not None:
        _train(data=data, brick_id=brick_id, description=description, examples=example or [], model=model,
               library=library, update=True, continue_training=continue_training, eval_data=eval_data, steps=steps,
               lr=lr, rank=rank, batch_size=batch_size, target=target, eval_every=eval_every, seed=seed,
               index=index, as_json=as_json, device=device)
        return
    from bricks.manifest import BrickManifest

    try:
        lib = _library(library)
        if not (Path(artifact) / "brick.json").is_file():  # a plain PEFT folder: manifest from the active version's
            from bricks.peft_import import update_from_peft

            brick = update_from_peft(lib, artifact, brick_id, description=description, examples=example or None,
                                     model=_peft_model(model, library, required=False), force=force)
            _sync_index(lib, index)
            typer.echo(f"updated {brick.key} from PEFT folder {str(artifact)!r} (active; older versions kept)")
            return
        found = BrickManifest.from_file(Path(artifact) / "brick.json").id
        if found != brick_id:
            fail(f"--artifact {str(artifact)!r} holds brick {found!r}, not {brick_id!r}")
        brick = lib.update(artifact, model_config=_check_config(model, library), force=force)
        _sync_index(lib, index)
    except user_errors() as e:
        fail(first_line(e))
    typer.echo(f"updated {brick.key} (active; older versions kept)")


def _peft_model(model: Path | None, library: Path | None, *, required: bool) -> Path | None:
    """The model folder a PEFT adapter is checked against: `--model`, the toy world's for the toy library, else
    None (refused when `required`: an imported adapter is always checked against the library's base model)."""
    if model is not None or library is None:
        return _model_dir(model)
    if required:
        fail(f"give --model: the library {str(library)!r}'s base model folder, which the adapter is checked against")
    return None


@bricks_app.command("import-peft")
def bricks_import_peft(adapter_dir: Path = typer.Argument(..., metavar="ADAPTER_DIR",
                                                          help="A PEFT LoRA folder: adapter_config.json + "
                                                               "adapter_model.safetensors (never modified)."),
                       brick_id: str = typer.Option(..., "--id", help="The new brick's id ([a-z0-9][a-z0-9_.-]*)."),
                       description: str = typer.Option(..., "--description", help="What the brick does, in one "
                                                                                  "sentence (routing reads it)."),
                       example: Optional[list[str]] = typer.Option(None, "--example",
                                                                   help="An instruction it serves (repeatable)."),
                       examples_file: Optional[Path] = typer.Option(None, "--examples",
                                                                    help="A file of example instructions: one per "
                                                                         "line, or JSONL rows with 'instruction'."),
                       library: Optional[Path] = LibraryOpt,
                       model: Optional[Path] = typer.Option(None, "--model", help="The library's base model folder "
                                                            "(its fingerprint is checked; required with --library)."),
                       force: bool = ForceOpt, as_json: bool = JsonOpt) -> None:
    """Import a PEFT LoRA adapter as a new brick: checked against the model (target modules, tensor names, shapes),
    added to the library with checksums and the base model's fingerprint, and the saved index updated."""
    from bricks.peft_import import import_peft, read_examples

    try:
        examples = list(example or []) + (read_examples(examples_file) if examples_file else [])
        lib = _library(library)
        brick = import_peft(lib, adapter_dir, brick_id=brick_id, description=description, examples=examples,
                            model=_peft_model(model, library, required=True), force=force)
        _sync_index(lib, True)
    except user_errors() as e:
        fail(first_line(e))
    if as_json:
        typer.echo(json.dumps({"brick": brick.key, "path": str(brick.path), "examples": brick.manifest.examples},
                              indent=2))
    else:
        typer.echo(f"imported {brick.key} from {str(adapter_dir)!r} into {str(lib.path)!r}")


@bricks_app.command("add")
def bricks_add(folder: Path = typer.Argument(..., help="A brick folder (brick.json + artifacts)."),
               library: Optional[Path] = LibraryOpt, index: bool = IndexOpt, model: Optional[Path] = CheckModelOpt,
               force: bool = ForceOpt) -> None:
    """Verify a brick folder against its manifest and the model and add it as a new brick; an existing id, or an
    adapter whose tensors match no module of the model (or only some, without --force), is refused."""
    try:
        lib = _library(library)
        brick = lib.add(folder, model_config=_check_config(model, library), force=force)
        _sync_index(lib, index)
    except user_errors() as e:
        fail(first_line(e))
    typer.echo(f"added {brick.key}")


@bricks_app.command("remove")
def bricks_remove(brick_id: str = typer.Argument(...),
                  version: Optional[int] = typer.Option(None, "--version", help="Only this version (default: all)."),
                  library: Optional[Path] = LibraryOpt, index: bool = IndexOpt) -> None:
    """Remove a brick (every version), or one version of it."""
    try:
        lib = _library(library)
        lib.remove(brick_id, version)
        _sync_index(lib, index)
    except user_errors() as e:
        fail(first_line(e))
    left = f"; active now {lib.get(brick_id).key}" if brick_id in lib else ""
    typer.echo(f"removed {brick_id}{'' if version is None else f'@{version}'}{left}")


@bricks_app.command("rollback")
def bricks_rollback(brick_id: str = typer.Argument(...),
                    to: Optional[int] = typer.Option(None, "--to", help="This version (default: the one before)."),
                    library: Optional[Path] = LibraryOpt, index: bool = IndexOpt) -> None:
    """Make the previous version of a brick active again (newer versions are kept)."""
    try:
        lib = _library(library)
        brick = lib.rollback(brick_id, to)
        _sync_index(lib, index)
    except user_errors() as e:
        fail(first_line(e))
    typer.echo(f"active: {brick.key}")


@bricks_app.command("versions")
def bricks_versions(brick_id: str = typer.Argument(...), library: Optional[Path] = LibraryOpt,
                    as_json: bool = JsonOpt) -> None:
    """List the stored versions of a brick; `*` marks the active one."""
    try:
        lib = _library(library)
        versions, active = lib.versions(brick_id), lib.active_version(brick_id)
    except user_errors() as e:
        fail(first_line(e))
    rows = [{"version": b.version, "active": b.version == active, "created": b.manifest.created,
             "metrics": b.manifest.metrics} for b in versions]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        em = r["metrics"].get("exact_match_holdout")
        typer.echo(f"{'*' if r['active'] else ' '} {brick_id}@{r['version']}  {r['created']}"
                   + (f"  held-out exact match {em:g}" if em is not None else ""))


@bricks_app.command("verify")
def bricks_verify(library: Optional[Path] = LibraryOpt, as_json: bool = JsonOpt) -> None:
    """Check every stored brick version against the checksums in its manifest; exit 1 on any problem."""
    t0 = time.perf_counter()
    try:
        report = _library(library).verify()
    except user_errors() as e:
        fail(first_line(e))
    if as_json:
        typer.echo(json.dumps({"ok": report.ok, "checked": list(report.checked), "problems": list(report.problems),
                               "leftovers": [str(p) for p in report.leftovers]}, indent=2))
    else:
        for problem in report.problems:
            typer.echo(f"problem: {problem}", err=True)
        for path in report.leftovers:
            typer.echo(f"note: {path} is left from an interrupted write (removed by the next write)", err=True)
        typer.echo(f"{'ok' if report.ok else 'FAILED'}: {len(report.checked)} brick version(s) verified, "
                   f"{len(report.problems)} problem(s) in {time.perf_counter() - t0:.1f} s")
    if not report.ok:
        raise typer.Exit(1)


bricks_app.info.help = "Inspect, train, update, roll back, remove and verify the bricks of a library."
