"""`python -m orchestrator.cli`: the same command line as the `brickwork` script."""

from orchestrator.cli import main

if __name__ == "__main__":  # not when a spawned process (the server's engine) imports it
    main()
