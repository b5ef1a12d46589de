"""Lean decoding on the transformers executor against `generate`: rows/s side by side, in one run.

Runs the server benchmark's mixed tasks (one- and two-step plans; base model, mask and LoRA bricks; answers of
6 to 12 characters) through `Orchestrator.run_batch` in batches of 1, 8, 16, 32 and 64 rows, alternating
`lean_decode` on and off for each size (best of `--repeat` passes each), and checks that both give the same
outputs. In a batch the loop drops rows that finished and grows the KV cache in place; alone it saves
`generate`'s per-step bookkeeping.

    python tests/benchmarks/bench_lean_decode.py [--rows 320] [--repeat 2] [--threads 1]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.ab_batches import run  # noqa: E402


if __name__ == "__main__":
    run(__doc__.splitlines()[0], "lean_decode", ("lean", "generate"))
