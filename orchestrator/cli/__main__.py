"""`python -m orchestrator.cli`: the same command line as the `brickwork` script."""

from orchestrator.cli import main

main()
