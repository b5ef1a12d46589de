"""One executor switch on and off, side by side: rows/s of `Orchestrator.run_batch` per batch size, best of
`repeat` alternating passes each, and whether both give the same outputs (shared by the A/B benchmarks)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

from tests.benchmarks.bench_serve import TASKS, WORDS


def mixed_jobs(rows: int) -> list[dict]:
    """The server benchmark's mixed tasks: one- and two-step plans; base model, mask and LoRA bricks."""
    return [{"instruction": TASKS[i % len(TASKS)][1], "input": WORDS[(i // len(TASKS)) % len(WORDS)]}
            for i in range(rows)]


def compare(orc, jobs: Sequence[dict], sizes: Sequence[int], repeat: int, switch: Callable[[bool], None],
            labels: tuple[str, str]) -> None:
    """Print, per batch size, rows/s with `switch(True)` and with `switch(False)`, their ratio, same outputs."""
    rows = len(jobs)
    print(f"{rows} rows per size (one at a time: {rows // 4})")
    print(f"{'batch':>5} {labels[0] + ' rows/s':>16} {labels[1] + ' rows/s':>16} {'ratio':>6} {'same outputs':>13}")
    orc.run_batch(list(jobs[:64]))  # warm-up: adapters loaded, masks read
    for size in sizes:
        count = rows // 4 if size == 1 else rows
        best = {True: 0.0, False: 0.0}
        outputs = {}
        for _ in range(repeat):
            for on in (True, False):
                switch(on)
                t0 = time.perf_counter()
                outs = []
                for j in range(0, count, size):
                    outs += [r.output for r in orc.run_batch(list(jobs[j:j + size]))]
                best[on] = max(best[on], count / (time.perf_counter() - t0))
                outputs[on] = outs
        same = outputs[True] == outputs[False]
        print(f"{size:>5} {best[True]:>16.1f} {best[False]:>16.1f} {best[True] / best[False]:>5.2f}x {str(same):>13}")


def run(description: str, attribute: str | Callable[[object], Callable[[bool], None]], labels: tuple[str, str],
        report: Callable | None = None) -> None:
    """The command line of an A/B benchmark of the executor's boolean `attribute`, or of the switch that
    `attribute(executor)` makes (`report(executor)` after)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rows", type=int, default=320)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    args = parser.parse_args()

    import torch

    from orchestrator import Orchestrator

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}")
    with Orchestrator.from_pretrained() as orc:
        executor = orc.executor
        switch = attribute(executor) if callable(attribute) else (lambda on: setattr(executor, attribute, on))
        compare(orc, mixed_jobs(args.rows), args.sizes, args.repeat, switch, labels)
        if report is not None:
            report(executor)
