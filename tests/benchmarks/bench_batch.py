"""Batch-job benchmark: `brickwork batch` throughput against a plain Python loop calling `orc.run` one row at a time.

    python tests/benchmarks/bench_batch.py [--rows 10000] [--loop-rows 300] [--chunk-size 1024] [--executor vllm]
                                           [--grouped]

Builds N toy world rows (single and compound tasks of every split, in a fixed shuffled order, ids made
unique), runs them as a batch job (`orchestrator.integrations.batch.run_local`, the engine of `brickwork batch`) into a
fresh output file, then times `orc.run` in a loop on the first `--loop-rows` of the same rows (the loop's rate
is steady, so a sample measures it; `--loop-rows 0` loops over all N). Both use the same loaded Orchestrator,
in one process, one after the other. Prints rows/s of each, the ratio, and whether the loop's outputs equal
the batch job's on the rows both ran.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path


def _rows(n: int, seed: int = 0) -> list[dict]:
    from bricks.toyworld.paths import world_data_dir

    files = sorted(world_data_dir().glob("*.jsonl"))
    pool = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
    random.Random(seed).shuffle(pool)
    return [{"id": f"b{i:06d}", "instruction": r["instruction"], "input": r["input"], "output": r["output"]}
            for i, r in enumerate(pool[i % len(pool)] for i in range(n))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--loop-rows", type=int, default=300, help="rows timed in the orc.run loop (0: all)")
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--executor", default="transformers", help="transformers | vllm (the same for batch and loop)")
    ap.add_argument("--grouped", action="store_true",
                    help="transformers: one generate per brick configuration (mixed_batches=False), as before one-pass "
                         "mixed batches; run with and without it to compare the two")
    args = ap.parse_args()

    from orchestrator.api import Orchestrator
    from orchestrator.integrations.batch import BatchJob, run_local

    rows = _rows(args.rows)
    with tempfile.TemporaryDirectory() as tmp, Orchestrator.from_pretrained(
            executor=args.executor, **({"mixed_batches": False} if args.grouped else {})) as orc:
        inp, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        orc.run("Reverse the text.", "warm")  # first-call costs out of both timings
        job = BatchJob.open(inp, out, chunk_size=args.chunk_size)
        t = time.perf_counter()
        summary = run_local(job, orc)
        batch_s = time.perf_counter() - t
        written = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}

        sample = rows if args.loop_rows <= 0 else rows[: args.loop_rows]
        t = time.perf_counter()
        looped = [orc.run(r["instruction"], r["input"]) for r in sample]
        loop_s = time.perf_counter() - t

    same = sum(res.output == (written[r["id"]]["output"] or "") for r, res in zip(sample, looped))
    batch_rate, loop_rate = len(rows) / batch_s, len(sample) / loop_s
    report = {
        "executor": args.executor, "rows": len(rows), "chunk_size": args.chunk_size, "batch_seconds": round(batch_s, 1),
        "batch_rows_per_s": round(batch_rate, 2), "loop_rows": len(sample), "loop_seconds": round(loop_s, 1),
        "loop_rows_per_s": round(loop_rate, 2), "ratio": round(batch_rate / loop_rate, 2),
        "loop_outputs_equal_batch": f"{same}/{len(sample)}", "errors": summary.errors, "accuracy": summary.accuracy,
        "brick_usage": summary.brick_usage,
    }
    print(json.dumps(report, indent=2))
    print(f"batch {batch_rate:.2f} rows/s vs loop {loop_rate:.2f} rows/s: {batch_rate / loop_rate:.1f}x")


if __name__ == "__main__":
    main()
