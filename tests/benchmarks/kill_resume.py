"""`brickwork batch` killed with SIGKILL at random moments and resumed, at full size, against an uninterrupted run.

    python tests/benchmarks/kill_resume.py [--rows 10000] [--kills 5] [--chunk-size 256] [--executor vllm] [--seed 0]

The rows are bench_batch.py's (single and compound toy-world tasks, shuffled, unique ids). One uninterrupted
`brickwork batch` run writes the reference. Then the same job is started `--kills` times into another output and
killed with SIGKILL (its whole process group, vLLM's engine processes included) once the output has grown by a
random number of rows, plus a random 0-2 s; each kill is followed by a resume, and a last resume runs it to the
end. Prints where each kill landed, whether every id is in the output exactly once, and whether every output
equals the reference's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _cli(inp: Path, out: Path, chunk: int, executor: str) -> list[str]:
    return [sys.executable, "-c", "from orchestrator.cli import main; main()", "batch", str(inp), "-o", str(out),
            "--chunk-size", str(chunk), "--executor", executor, "--json", "--quiet"]


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument("--executor", default="vllm")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_batch import _rows

    rng = random.Random(args.seed)
    rows = _rows(args.rows)
    tmp = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    inp, ref, out = tmp / "in.jsonl", tmp / "ref.jsonl", tmp / "out.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    t = time.perf_counter()
    subprocess.run(_cli(inp, ref, args.chunk_size, args.executor), check=True, **quiet)
    ref_s = time.perf_counter() - t

    kills = []
    for _ in range(args.kills):
        before = _lines(out)
        target = before + rng.randint(1, max(1, (args.rows - before) // 3))
        proc = subprocess.Popen(_cli(inp, out, args.chunk_size, args.executor), start_new_session=True, **quiet)
        while _lines(out) < target and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 2))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills.append({"lines_before": before, "lines_at_kill": _lines(out), "finished_first": proc.returncode == 0})
    subprocess.run(_cli(inp, out, args.chunk_size, args.executor), check=True, **quiet)

    want = {r["id"]: r for r in map(json.loads, ref.read_text().splitlines())}
    got = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [r["id"] for r in got]
    same = sum(r["output"] == want[r["id"]]["output"] and r["error"] == want[r["id"]]["error"] for r in got)
    report = {"rows": args.rows, "executor": args.executor, "chunk_size": args.chunk_size,
              "reference_seconds": round(ref_s, 1), "kills": kills,
              "ids_exactly_once": len(ids) == len(set(ids)) == len(want) and set(ids) == set(want),
              "outputs_equal_reference": f"{same}/{len(want)}"}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
