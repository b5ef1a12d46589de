"""`--engine ray` on a local Ray writes the same rows as the local engine, with transformers or vLLM in the actors."""

import json
import sys

import pytest

from bricks.toyworld.paths import world_data_dir
from orchestrator.integrations.batch import BatchError, BatchJob, run_local

pytestmark = pytest.mark.slow


def test_missing_ray_names_the_extra(monkeypatch):
    from orchestrator.integrations.ray import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(BatchError, match=r"pip install 'brickwork\[ray\]'"):
        import_ray()


def _input(tmp_path):
    lines = world_data_dir().joinpath("compound_test.jsonl").read_text().splitlines()[:20]
    lines += ['{"id": "bad", "input": "abc"}']
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(lines) + "\n")
    return inp


def _local(inp, out):
    import torch

    from orchestrator.api import Orchestrator

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray worker (one CPU) runs; faster for a 1 M-parameter model on a busy box
    try:
        with Orchestrator.from_pretrained() as orc:
            return run_local(BatchJob.open(inp, out, chunk_size=6), orc)
    finally:
        torch.set_num_threads(threads)


def _rows(path):
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_ray_and_local_engines_write_identical_rows(tmp_path):
    pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from orchestrator.integrations.ray import run_ray

    inp = _input(tmp_path)
    local = _local(inp, tmp_path / "local.jsonl")
    remote = run_ray(BatchJob.open(inp, tmp_path / "ray.jsonl", chunk_size=6), workers=2)
    assert local.rows == remote.rows == remote.written == 21 and remote.errors == local.errors >= 1
    assert _rows(tmp_path / "ray.jsonl") == _rows(tmp_path / "local.jsonl")
    assert local.brick_usage == remote.brick_usage and local.accuracy == remote.accuracy


def test_a_ray_worker_runs_the_vllm_executor(tmp_path, vllm_available):
    """One Ray actor holding a vLLM engine writes the rows the local transformers engine writes (float32)."""
    pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from orchestrator.integrations.ray import run_ray

    inp = _input(tmp_path)
    local = _local(inp, tmp_path / "local.jsonl")
    remote = run_ray(BatchJob.open(inp, tmp_path / "ray.jsonl", chunk_size=6), workers=1, cpus_per_worker=2,
                     executor="vllm", executor_options={"cpu_kv_cache_gib": 1})
    assert remote.written == 21 and remote.errors == local.errors >= 1
    assert _rows(tmp_path / "ray.jsonl") == _rows(tmp_path / "local.jsonl")
