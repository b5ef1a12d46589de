"""What only the vLLM executor does: bad bricks refused without harm to the engine, more adapters than LoRA
slots in one call, bricks added while it runs, compact FFN in the workers, and the Orchestrator on top."""

import shutil

import pytest

from bricks.prompt import DEFAULT_TEMPLATE
from orchestrator.executor import GenerationRequest, UnsupportedConfigError
from orchestrator.plan import BrickConfig, BrickRef, Decoding

D = Decoding(max_new_tokens=16)


def _req(instruction, x, *bricks, **config):
    return GenerationRequest(DEFAULT_TEMPLATE.render(instruction, x), BrickConfig(bricks=bricks, **config), D)


def _lora(id_, version=1):
    return BrickRef(id=id_, version=version, kind="lora")


BASE = _req("Reverse the text.", "planet")


def test_brick_above_max_lora_rank_is_refused_and_the_engine_lives_on(vllm_executor):
    assert vllm_executor.max_lora_rank == 32
    with pytest.raises(UnsupportedConfigError, match=r"wide@1: rank 64 is above the engine's max_lora_rank 32"):
        vllm_executor.generate([BASE, _req("Reverse the text.", "moon", _lora("wide"))])
    assert vllm_executor.generate([BASE]) == ["tenalp"]


def test_mask_of_another_model_is_refused_naming_the_brick(vllm_executor):
    alien = BrickRef(id="alien", version=1, kind="ffn_mask")
    with pytest.raises(UnsupportedConfigError, match=r"alien@1: ffn_mask brick alien@1 does not fit the base model"):
        vllm_executor.generate([_req("Reverse the text.", "moon", alien)])
    assert vllm_executor.generate([BASE]) == ["tenalp"]


def test_more_adapters_than_lora_slots_in_one_call(vllm_executor):
    assert vllm_executor.max_loras == 2
    reqs = [_req("Apply a Caesar shift of one.", "planet", _lora("caesar")),
            _req("Write every letter twice.", "moon", _lora("double", 2)),
            _req("Write every letter twice.", "moon", _lora("double", 1)),
            _req("Remove the vowels.", "garden", _lora("devowel", 2)),
            _req("Subtract the second number from the first.", "30 12", _lora("subtract")), BASE]
    assert vllm_executor.generate(reqs) == ["qmbofu", "mmoooonn", "mmoooonn", "grdn", "18", "tenalp"]


def test_brick_added_to_the_library_is_served_without_a_restart(vllm_executor, conformance_library, tmp_path):
    from bricks.manifest import BrickManifest

    src = conformance_library.get("caesar").path
    shutil.copytree(src, tmp_path / "rot")
    manifest = BrickManifest.from_file(tmp_path / "rot" / "brick.json")
    manifest.model_copy(update={"id": "rot", "version": 1, "description": "rot: a copy of caesar",
                                "examples": ["rot example"]}).save(tmp_path / "rot" / "brick.json")
    conformance_library.add(tmp_path / "rot")
    assert vllm_executor.generate([_req("Apply a Caesar shift of one.", "brick", _lora("rot"))]) == ["csjdl"]


def test_mask_only_batches_run_compact_in_the_workers(vllm_executor):
    keep80 = BrickRef(id="keep80", version=1, kind="ffn_mask")
    before = vllm_executor.mask_stats()["passes"]
    vllm_executor.generate([_req("Reverse the text.", w, keep80) for w in ("planet", "moon")])
    after = vllm_executor.mask_stats()
    assert "keep80@1" in after["slots"]
    assert after["passes"]["compact"] > before["compact"]
    mixed = [_req("Reverse the text.", "moon", keep80), BASE]
    vllm_executor.generate(mixed)
    assert vllm_executor.mask_stats()["passes"]["mixed"] > after["passes"]["mixed"]


def test_orchestrator_runs_plans_on_vllm_as_on_transformers(vllm_executor, transformers_executor, conformance_library):
    from orchestrator import Orchestrator
    from orchestrator.factory import open_planner

    tasks = [("Reverse the text, then convert to uppercase.", "planet"),
             ("Apply a Caesar shift of one and then write every letter twice.", "moon"),
             ("Add the two numbers.", "12 30")]
    planner = open_planner(conformance_library.path)
    on_vllm = Orchestrator(planner, vllm_executor).run_batch(tasks)
    on_tf = Orchestrator(planner, transformers_executor).run_batch(tasks)
    assert [r.output for r in on_vllm] == [r.output for r in on_tf] == ["TENALP", "nnppppoo", "42"]
    assert [s.config.key for s in on_vllm[1].plan.steps] == ["caesar@1", "double@2"]
