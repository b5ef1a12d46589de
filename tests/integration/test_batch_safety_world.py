"""`brickwork batch` on the shipped toy world gives no silent wrong answers: a second job on the same output is
refused while the first runs (exit code 2, naming its pid), and a brick removed while a job runs stops the job
instead of rerouting the rows after it; the rerun resumes and writes every id exactly once."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bricks.toyworld.paths import world_data_dir, world_library_dir
from orchestrator.integrations.batch import BatchError, BatchJob, run_local
from orchestrator.integrations.batch_guard import lock_path

pytestmark = pytest.mark.slow
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _input(tmp_path: Path, per_skill: int) -> Path:
    """Toy-world rows of every skill, round robin, so every chunk holds rows of every brick."""
    by_skill: dict[str, list[str]] = {}
    for line in world_data_dir().joinpath("single_test.jsonl").read_text().splitlines():
        by_skill.setdefault(json.loads(line)["skills"][0], []).append(line)
    lines = [group[i] for i in range(per_skill) for group in by_skill.values()]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _cli(inp: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", "from orchestrator.cli import main; main()", "batch", str(inp), "-o", str(out),
            "--chunk-size", "9", "--json", *extra]


def _ids(out: Path) -> list[str]:
    return [json.loads(line)["id"] for line in out.read_text().splitlines()]


def test_a_second_cli_job_on_the_same_output_is_refused_while_the_first_runs(tmp_path):
    inp = _input(tmp_path, 20)  # 180 rows: the first job runs long enough to meet the second
    out = tmp_path / "out.jsonl"
    first = subprocess.Popen(_cli(inp, out), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (lock_path(out).exists() and lock_path(out).read_text().strip() == str(first.pid)):
            assert first.poll() is None and time.monotonic() < deadline, "the first job never took the lock"
            time.sleep(0.05)
        second = subprocess.run(_cli(inp, out), env=ENV, capture_output=True, text=True, timeout=300)
        assert first.poll() is None, "the first job ended before the second one started"
        assert second.returncode == 2 and second.stdout == ""
        assert second.stderr.strip().splitlines()[-1] == (
            f"error: {out} is being written by another batch job (pid {first.pid}, lock {lock_path(out)}); "
            "wait for it to end or choose another -o")
        stdout, stderr = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr
    assert json.loads(stdout)["written"] == 180
    ids = _ids(out)
    assert len(ids) == len(set(ids)) == 180  # every id exactly once: the refused job wrote nothing
    assert not lock_path(out).exists()


def test_a_brick_removed_while_the_job_runs_stops_it_then_the_rerun_resumes(tmp_path):
    import torch

    from bricks.library import Library
    from orchestrator.api import Orchestrator

    lib = tmp_path / "lib"
    shutil.copytree(world_library_dir(), lib)
    inp = _input(tmp_path, 3)  # 27 rows, 3 chunks of 9, devowel rows in each
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Orchestrator.from_pretrained(library=lib) as orc:
            with BatchJob.open(inp, tmp_path / "ref.jsonl", library=lib, chunk_size=9) as job:
                run_local(job, orc)  # the reference: the library as it is at the start, uninterrupted
            reference = {r["id"]: r for r in map(json.loads, (tmp_path / "ref.jsonl").read_text().splitlines())}
            assert any(r["steps"][0]["bricks"] == ["devowel@2"] for r in list(reference.values())[9:])

            def remove_after_first_chunk(done: int, total: int) -> None:
                if done == 9:
                    Library.open(lib).remove("devowel")  # as another process would

            out = tmp_path / "out.jsonl"
            with BatchJob.open(inp, out, library=lib, chunk_size=9) as job:
                with pytest.raises(BatchError, match=r"^brick devowel@2 was removed from the library while the job "
                                                     r"ran; the 9 rows written are kept in .*; rerun to resume"):
                    run_local(job, orc, progress=remove_after_first_chunk)
    finally:
        torch.set_num_threads(threads)
    kept = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(kept) == 9 and all(kept[k] == reference[k] for k in kept)  # written as routed at the start
    done = subprocess.run(_cli(inp, out, "--library", str(lib)), env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["skipped"] == 9 and summary["written"] == 18
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    ids = _ids(out)
    assert len(ids) == len(set(ids)) == 27 and {k: rows[k] for k in kept} == kept
    assert all("devowel@2" not in step["bricks"] for k, r in rows.items() if k not in kept for step in r["steps"])
