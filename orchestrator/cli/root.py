"""The root of the `brickwork` command line: the Typer apps, shared options, and how errors are printed.

Command modules (`run`, `bricks`, `library`, `emergent`, `world`, `batch`, `serve`) register on these apps;
`orchestrator.cli` imports them all, so every entry point (`brickwork`, `python -m orchestrator.cli`) has every command.
"""

from __future__ import annotations

import sys
import traceback
from typing import NoReturn

import typer

__all__ = ["app", "bricks_app", "index_app", "ModelOpt", "LibraryOpt", "DeviceOpt", "fail", "first_line",
           "user_errors", "debug_enabled", "package_version", "executor_options"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help="brickwork: an LLM configured out of bricks.")
bricks_app = typer.Typer(no_args_is_help=True, help="Inspect the bricks of a library.")
index_app = typer.Typer(no_args_is_help=True, help="Build the brick index of a library.")
app.add_typer(bricks_app, name="bricks")
app.add_typer(index_app, name="index")

ModelOpt = typer.Option(None, "--model", help="HF model folder (default: the toy world's model).")
LibraryOpt = typer.Option(None, "--library", help="Brick library folder (default: the toy world's library).")
DeviceOpt = typer.Option("auto", "--device", help="Where the model runs: auto (a GPU when torch sees one, else "
                                                  "the CPU) | cpu | cuda | cuda:N.")

_state = {"debug": False}


def package_version() -> str:
    """brickwork's version, as installed (written once, in pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("brickwork")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"brickwork {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Print the traceback of an error, not one line."),
          version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print brickwork's version and exit.")) -> None:
    _state["debug"] = debug


def debug_enabled() -> bool:
    """Whether `--debug` was given: errors then print their traceback before the one-line message."""
    return _state["debug"]


def fail(message: str) -> NoReturn:
    """Print one line to stderr and exit with status 2 (with `--debug`, the exception being handled first)."""
    if _state["debug"] and sys.exc_info()[0] is not None:
        traceback.print_exc()
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (a KeyError's without its quotes), or its type's name."""
    text = str(e.args[0] if isinstance(e, KeyError) and e.args else e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that are the user's input or environment being wrong (one line, exit 2)."""
    return (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
            KeyError, UnicodeDecodeError)


def executor_options(executor: str, device: str) -> dict:
    """The executor options `--device` gives, checked first: a CUDA device torch does not see is one line (exit 2)
    before anything loads. vLLM places its model itself, so with it only `auto` (or a CUDA device it sees) goes."""
    from bricks.device import resolve_device
    from bricks.errors import ConfigError

    resolved = resolve_device(device)
    if executor == "vllm":
        if resolved == "cpu" and str(device).strip().lower() != "auto":
            raise ConfigError(f"--device {device!r} is for the transformers executor; vLLM places its model itself")
        return {}
    return {"device": resolved}
