"""`brickwork batch` on the shipped toy world: killed with SIGKILL at random moments and resumed, it writes every
id exactly once and the same outputs as an uninterrupted run; bad rows become error rows."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bricks.toyworld.paths import world_data_dir
from orchestrator.integrations.batch import BatchJob, run_local

pytestmark = pytest.mark.slow
CHUNK = 8


def _sample(path: Path, n: int, step: int) -> list[str]:
    return path.read_text().splitlines()[::step][:n]


@pytest.fixture(scope="module")
def job_input(tmp_path_factory) -> Path:
    data = world_data_dir()
    lines = _sample(data / "single_test.jsonl", 64, 28) + _sample(data / "compound_test.jsonl", 32, 15)
    lines += ['{"id": "no-instruction", "input": "abc"}', "{broken json", '{"id": "x-empty", "instruction": ""}']
    random.Random(0).shuffle(lines)
    path = tmp_path_factory.mktemp("batch") / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def reference(job_input, tmp_path_factory) -> dict:
    """An uninterrupted run, in this process (one torch thread, as the CLI runs below get)."""
    import torch

    from orchestrator.api import Orchestrator

    out = tmp_path_factory.mktemp("ref") / "out.jsonl"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Orchestrator.from_pretrained() as orc, BatchJob.open(job_input, out, chunk_size=CHUNK) as job:
            summary = run_local(job, orc)
    finally:
        torch.set_num_threads(threads)
    assert summary.written == summary.rows == 99 and summary.errors >= 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return {r["id"]: r for r in rows}


def _cli(job_input: Path, out: Path) -> list[str]:
    return [sys.executable, "-c", "from orchestrator.cli import main; main()", "batch", str(job_input), "-o", str(out),
            "--chunk-size", str(CHUNK), "--json"]


# a 1 M-parameter model runs fastest on one thread (more threads only wait on each other on a busy CI box)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_kill_9_at_random_moments_then_resume(job_input, reference, tmp_path):
    out = tmp_path / "out.jsonl"
    rng = random.Random()
    kills = 0
    env = ENV
    for _ in range(3):
        target = _lines(out) + rng.randint(1, 3 * CHUNK)
        proc = subprocess.Popen(_cli(job_input, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while proc.poll() is None and _lines(out) < target and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.5))  # anywhere: mid-chunk, mid-write, between chunks
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2, "the job finished before it could be killed twice"
    done = subprocess.run(_cli(job_input, out), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["rows"] == 99 and summary["written"] + summary["skipped"] == 99
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 99  # every id exactly once
    assert {r["id"]: r for r in rows} == reference  # the same outputs as an uninterrupted run


def test_rerun_of_a_finished_job_writes_nothing_and_another_input_is_refused(job_input, reference, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in reference.values()))
    BatchJob.open(job_input, tmp_path / "claim.jsonl").close()  # a real job file, to copy
    (tmp_path / "out.jsonl.job.json").write_bytes((tmp_path / "claim.jsonl.job.json").read_bytes())
    env = ENV
    done = subprocess.run(_cli(job_input, out), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and json.loads(done.stdout)["written"] == 0
    other = tmp_path / "other.jsonl"
    other.write_text(job_input.read_text().splitlines()[0] + "\n")
    refused = subprocess.run(_cli(other, out), env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "belongs to another job" in refused.stderr
