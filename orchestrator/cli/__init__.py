"""The `brickwork` command line (typer): one module per command group, all registered here.

`main()` is the console script; `python -m orchestrator.cli` runs the same thing. Any `BrickworkError` that a
command does not handle itself is printed as one line (exit 2); `--debug` prints its traceback.
"""

from __future__ import annotations

import logging
import sys

from orchestrator.cli import batch, bricks, emergent, library, run, serve, world  # noqa: F401  (each registers its commands)
from orchestrator.cli.root import app, debug_enabled, first_line

__all__ = ["app", "main"]


def main() -> None:
    """Run the command line; a brickwork error escaping a command is one line on stderr and exit status 2."""
    from bricks.errors import BrickworkError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except BrickworkError as e:
        if debug_enabled():
            raise
        print(f"error: {first_line(e)}", file=sys.stderr)
        sys.exit(2)
