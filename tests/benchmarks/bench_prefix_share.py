"""Shared-prefix prefill on the transformers executor: rows/s with and without it, side by side, in one run.

Runs the server benchmark's mixed tasks (one- and two-step plans; base model, mask and LoRA bricks) through
`Orchestrator.run_batch` in batches of 1, 8, 16, 32 and 64 rows, alternating `share_prefixes` on and off for
each size (best of `--repeat` passes each), and checks that both give the same outputs.

    python tests/benchmarks/bench_prefix_share.py [--rows 320] [--repeat 2] [--threads 1]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.ab_batches import run  # noqa: E402


def report(executor) -> None:
    stats = executor.prefix_stats
    print(f"shared batches {stats.batches}, rows {stats.rows}: {stats.saved_tokens} of {stats.prompt_tokens} "
          f"prompt tokens not computed ({stats.saved_tokens / max(1, stats.prompt_tokens):.0%})")


if __name__ == "__main__":
    run(__doc__.splitlines()[0], "share_prefixes", ("shared", "plain"), report)
