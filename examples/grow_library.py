"""Grow a running library: a skill that no brick serves falls back to the base model and fails; `brickwork bricks
train` adds a brick for it from another process, and the same running Orchestrator routes to it at once.

On a copy of the toy world's library: remove `subtract`, measure subtraction through the orchestrator (base model),
train a new `subtract` brick with the CLI in another process, measure again with the same Orchestrator object
(whose traces name the new version, subtract@2: numbers are never reused). Prints a JSON report.

    python examples/grow_library.py [/tmp/grow-library] [--steps 3000]
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bricks import Library
from bricks.rows import read_rows
from bricks.toyworld.dataset import split_path
from bricks.toyworld.paths import world_data_dir, world_library_dir, world_model_dir
from bricks.toyworld.skills import SKILLS
from orchestrator import Orchestrator

parser = argparse.ArgumentParser()
parser.add_argument("folder", nargs="?", default=None, help="where the library copy goes (default: a temp folder)")
parser.add_argument("--steps", default="3000", help="most training steps (it stops early at 0.99 held-out)")
opts = parser.parse_args()
out = Path(opts.folder or tempfile.mkdtemp(prefix="grow-")) / "library"
shutil.copytree(world_library_dir(), out)  # never touch the shipped world
Library.open(out).remove("subtract")

test = [r for r in read_rows(split_path(world_data_dir(), "single", "test")) if r.skills == ("subtract",)]
train = [r for r in read_rows(split_path(world_data_dir(), "single", "train")) if r.skills == ("subtract",)]
rows_file = out.parent / "subtract_train.jsonl"
rows_file.write_text("".join(json.dumps(r.as_dict()) + "\n" for r in train))


def accuracy(orc: Orchestrator) -> tuple[float, list[str]]:
    results = orc.run_batch([(r.instruction, r.input) for r in test])
    used = sorted({",".join(b.key for b in res.steps[0].bricks) or "base" for res in results})
    return sum(res.output == r.output for res, r in zip(results, test)) / len(test), used


with Orchestrator.from_pretrained(library=out) as orc:
    before, routed_before = accuracy(orc)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from orchestrator.cli import main; main()", "bricks", "train",
                    "--library", str(out), "--model", str(world_model_dir()), "--data", str(rows_file),
                    "--id", "subtract", "--description", SKILLS["subtract"].description, "--steps", opts.steps,
                    "--json"], check=True)
    train_s = time.perf_counter() - t0
    after, routed_after = accuracy(orc)  # the same Orchestrator: it follows the library by itself
    brick = Library.open(out).get("subtract")
    report = {"library": str(out), "test_rows": len(test), "train_rows": len(train),
              "before": {"exact_match": before, "routed_to": routed_before},
              "after": {"exact_match": after, "routed_to": routed_after, "brick": brick.key,
                        "metrics": brick.manifest.metrics},
              "train_wall_s": round(train_s, 1)}
print(json.dumps(report, indent=2))
