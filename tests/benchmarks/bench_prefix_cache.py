"""Prefixes kept across calls on the transformers executor: rows/s with and without the prefix cache, side by
side, in one run.

Runs the server benchmark's mixed tasks (one- and two-step plans; base model, mask and LoRA bricks) through
`Orchestrator.run_batch` in batches of 1, 8, 16, 32 and 64 rows, alternating the executor's `prefix_cache` on
and off for each size (best of `--repeat` passes each; shared prefixes within a batch stay on in both), and
checks that both give the same outputs.

    python tests/benchmarks/bench_prefix_cache.py [--rows 320] [--repeat 2] [--threads 1]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.ab_batches import run  # noqa: E402

STORES: list = []  # the executor's store, kept while the switch turns it off


def switch(executor):
    STORES.append(executor.prefix_cache)

    def on(enabled: bool) -> None:
        executor.prefix_cache = STORES[0] if enabled else None

    return on


def report(executor) -> None:
    stats = STORES[0].stats
    print(f"prefix cache: {stats.hits} hits of {stats.lookups} lookups, {stats.hit_tokens} prompt tokens not "
          f"computed; {stats.entries} entries, {stats.bytes / 2**20:.2f} MiB, {stats.evictions} evicted")


if __name__ == "__main__":
    run(__doc__.splitlines()[0], switch, ("cached", "plain"), report)
