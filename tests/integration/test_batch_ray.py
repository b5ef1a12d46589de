"""`--engine ray` on a local Ray with 2 worker actors writes the same rows as the local engine."""

import json
import sys

import pytest

from bricks.toyworld.paths import world_data_dir
from orchestrator.batch import BatchError, BatchJob, run_local

pytestmark = pytest.mark.slow


def test_missing_ray_names_the_extra(monkeypatch):
    from orchestrator.batch_ray import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(BatchError, match=r"pip install 'brickwork\[ray\]'"):
        import_ray()


def test_ray_and_local_engines_write_identical_rows(tmp_path):
    pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    import torch

    from orchestrator.api import Orchestrator
    from orchestrator.batch_ray import run_ray

    lines = world_data_dir().joinpath("compound_test.jsonl").read_text().splitlines()[:20]
    lines += ['{"id": "bad", "input": "abc"}']
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(lines) + "\n")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray worker (one CPU) runs; faster for a 1 M-parameter model on a busy box
    try:
        with Orchestrator.from_pretrained() as orc:
            local = run_local(BatchJob.open(inp, tmp_path / "local.jsonl", chunk_size=6), orc)
    finally:
        torch.set_num_threads(threads)
    remote = run_ray(BatchJob.open(inp, tmp_path / "ray.jsonl", chunk_size=6), workers=2)
    assert local.rows == remote.rows == remote.written == 21 and remote.errors == local.errors >= 1

    def rows(name):
        return {r["id"]: r for r in map(json.loads, (tmp_path / name).read_text().splitlines())}

    assert rows("ray.jsonl") == rows("local.jsonl")
    assert local.brick_usage == remote.brick_usage and local.accuracy == remote.accuracy
