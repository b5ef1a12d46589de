"""Shared-prefix prefill on the transformers executor: rows/s with and without it, side by side, in one run.

Runs the server benchmark's mixed tasks (one- and two-step plans; base model, mask and LoRA bricks) through
`Orchestrator.run_batch` in batches of 1, 8, 16, 32 and 64 rows, alternating `share_prefixes` on and off for
each size (best of `--repeat` passes each), and checks that both give the same outputs.

    python tests/benchmarks/bench_prefix_share.py [--rows 320] [--repeat 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.bench_serve import TASKS, WORDS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=320)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    args = parser.parse_args()

    import torch

    from orchestrator import Orchestrator

    if args.threads:
        torch.set_num_threads(args.threads)
    jobs = [{"instruction": TASKS[i % len(TASKS)][1], "input": WORDS[(i // len(TASKS)) % len(WORDS)]}
            for i in range(args.rows)]
    print(f"torch threads {torch.get_num_threads()}; {args.rows} rows per size (one at a time: {args.rows // 4})")
    print(f"{'batch':>5} {'shared rows/s':>14} {'plain rows/s':>13} {'ratio':>6} {'same outputs':>13}")
    with Orchestrator.from_pretrained() as orc:
        executor = orc.executor
        orc.run_batch(jobs[:64])  # warm-up: adapters loaded, masks read
        for size in args.sizes:
            count = args.rows // 4 if size == 1 else args.rows
            best = {True: 0.0, False: 0.0}
            outputs = {}
            for _ in range(args.repeat):
                for share in (True, False):
                    executor.share_prefixes = share
                    t0 = time.perf_counter()
                    outs = []
                    for j in range(0, count, size):
                        outs += [r.output for r in orc.run_batch(jobs[j:j + size])]
                    best[share] = max(best[share], count / (time.perf_counter() - t0))
                    outputs[share] = outs
            same = outputs[True] == outputs[False]
            print(f"{size:>5} {best[True]:>14.1f} {best[False]:>13.1f} {best[True] / best[False]:>5.2f}x {str(same):>13}")
        stats = executor.prefix_stats
        print(f"shared batches {stats.batches}, rows {stats.rows}: {stats.saved_tokens} of {stats.prompt_tokens} "
              f"prompt tokens not computed ({stats.saved_tokens / max(1, stats.prompt_tokens):.0%})")


if __name__ == "__main__":
    main()
