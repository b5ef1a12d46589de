"""`brickwork library init DIR --model MODEL`: a new, empty brick library for your own base model.

The library records the model's name and fingerprint (`bricks.fingerprint`); bricks built on another model are
refused when added, and a run with another model is refused before any brick is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from orchestrator.cli.root import app, fail, first_line, user_errors

__all__ = ["library_app", "init_library"]

library_app = typer.Typer(no_args_is_help=True, help="Create a brick library for your own base model.")
app.add_typer(library_app, name="library")


def init_library(folder: Path, model: Path, *, name: str | None = None, base_examples: list[str] | None = None,
                 input_required: bool = False):
    """Create an empty library at `folder` for the model folder `model` (an existing library is refused).

    The base model is recorded by `name` (default: the model folder's name) and fingerprint; `base_examples` are
    instructions the base model serves unaided (routing sends a step like them to no brick).
    """
    from bricks.errors import LibraryError
    from bricks.fingerprint import model_fingerprint
    from bricks.library import LIBRARY_FILE, Library
    from bricks.manifest import BaseModelRef
    from bricks.model_io import check_model_dir

    folder = Path(folder)
    if (folder / LIBRARY_FILE).exists():
        raise LibraryError(f"a library already exists at {str(folder)!r}; expected a new or empty folder")
    if folder.exists() and not folder.is_dir():
        raise LibraryError(f"{str(folder)!r} is a file; expected a new or empty folder")
    source = check_model_dir(Path(model))
    examples = list(dict.fromkeys(e.strip() for e in base_examples or [] if e.strip()))
    ref = BaseModelRef(name=name or source.name, fingerprint=model_fingerprint(source))
    return Library.create(folder, ref, examples, input_required=input_required)


@library_app.command("init")
def library_init(folder: Path = typer.Argument(..., metavar="DIR", help="The new library's folder."),
                 model: Path = typer.Option(..., "--model", help="The base model's Hugging Face folder "
                                                                 "(config.json + *.safetensors)."),
                 name: Optional[str] = typer.Option(None, "--name", help="The base model's name in the library "
                                                                         "(default: the model folder's name)."),
                 base_example: Optional[list[str]] = typer.Option(None, "--base-example",
                                                                  help="An instruction the base model serves "
                                                                       "without a brick (repeatable)."),
                 input_required: bool = typer.Option(False, "--input-required",
                                                     help="Every task needs an input: run refuses one without."),
                 as_json: bool = typer.Option(False, "--json", help="Print JSON for machines.")) -> None:
    """Create an empty brick library for a base model, recording its name and fingerprint."""
    try:
        lib = init_library(folder, model, name=name, base_examples=base_example, input_required=input_required)
    except user_errors() as e:
        fail(first_line(e))
    ref = lib.base_model
    if as_json:
        typer.echo(json.dumps({"library": str(lib.path), "base_model": ref.model_dump(),
                               "base_examples": lib.base_examples}, indent=2))
        return
    typer.echo(f"created library {str(lib.path)!r} for {ref.name} {ref.fingerprint}")
