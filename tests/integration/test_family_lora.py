"""Default LoRA targets per model family (#20): for each family, a tiny random model (the zoo's configs,
tests/zoo_models.py, plus Qwen2-MoE; saved and loaded back, no download) gets its family's targets, which exist in
the model as linear layers; a few training steps on them give an adapter that loads back onto a fresh copy of the
model with the same outputs and that the brick checks accept. A mixture of experts' routed experts (fused 3-D
weights) are PEFT `target_parameters`, trained and loaded back the same way."""

from dataclasses import replace

import pytest
import torch
from zoo_models import SMALL, ZOO, save_zoo_model

from bricks.families import FAMILIES, lora_expert_parameters, lora_targets
from bricks.rows import InstructionRow
from bricks.training.lora import LoraTrainConfig, train_lora
from bricks.training.targets import lora_target_modules

QKVO, GATED = ("q_proj", "k_proj", "v_proj", "o_proj"), ("gate_proj", "up_proj", "down_proj")
# family -> its default LoRA targets
FAMILY_TARGETS = {
    "llama": QKVO + GATED,
    "mistral": QKVO + GATED,
    "qwen2": QKVO + GATED,
    "qwen3": QKVO + GATED,
    "gemma2": QKVO + GATED,
    "olmo2": QKVO + GATED,
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "mixtral": QKVO,
    "qwen2_moe": QKVO,  # not in the zoo: built here
}
QWEN2_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=64)
EXPERTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
ROWS = [InstructionRow(str(i), "Double every letter.", w, "".join(c * 2 for c in w))
        for i, w in enumerate(["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op", "qr", "st", "uv", "wx"])]
QUICK = LoraTrainConfig(r=4, alpha=8, max_steps=3, batch_size=4, warmup=1, eval_every=100, max_new_tokens=3, lr=2e-2)


@pytest.fixture(scope="module")
def tok():
    from bricks.toyworld.tokenizer import build_tokenizer

    return build_tokenizer()


def _saved(family, tok, folder):
    """A tiny random model of `family` on the character tokenizer, saved to `folder` (loaded back by `_load`)."""
    if family in ZOO:
        return save_zoo_model(family, folder, tokenizer=tok)
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    torch.manual_seed(0)
    special = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    cfg = Qwen2MoeConfig(**{**SMALL, **QWEN2_MOE, "vocab_size": len(tok), **special})
    Qwen2MoeForCausalLM(cfg).save_pretrained(folder)
    return folder


def _load(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def _logits(model):
    with torch.inference_mode():
        return model(input_ids=torch.arange(5, 21).reshape(2, 8)).logits


def _loads_back_the_same(result, model_dir, adapter_dir):
    """The trained adapter saved as a brick's files, loaded onto a fresh copy: the same outputs, and the adapter did
    change them."""
    from peft import PeftModel

    from bricks.training.export import save_adapter

    save_adapter(result.model, adapter_dir)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter_dir.iterdir()}
    loaded = PeftModel.from_pretrained(_load(model_dir), str(adapter_dir)).eval()
    trained = _logits(result.model)
    assert torch.allclose(_logits(loaded), trained, atol=1e-5)
    assert not torch.allclose(_logits(_load(model_dir)), trained, atol=1e-4)


@pytest.mark.parametrize("family", sorted(FAMILY_TARGETS))
def test_family_targets_exist_and_train_a_loadable_adapter(family, tok, tmp_path):
    from types import SimpleNamespace

    from transformers.pytorch_utils import Conv1D

    from bricks.lora.brick import LoraBrick, LoraBrickConfig

    model_dir = _saved(family, tok, tmp_path / "model")
    model = _load(model_dir)
    expected = FAMILY_TARGETS[family]
    assert model.config.model_type == family and family in FAMILIES
    assert lora_targets(model.config) == expected == lora_target_modules(model)
    leaves = {name.rsplit(".", 1)[-1]: m for name, m in model.named_modules()}
    assert all(isinstance(leaves[t], (torch.nn.Linear, Conv1D)) for t in expected)
    result = train_lora(model, tok, ROWS, QUICK)  # QUICK names no targets: the family's
    assert result.steps == 3
    trained = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k, _ in result.model.named_parameters() if "lora_" in k}
    assert trained == set(expected)
    _loads_back_the_same(result, model_dir, tmp_path / "adapter")
    brick = LoraBrick(tmp_path / "adapter", SimpleNamespace(key=f"{family}@1", id=family),
                      LoraBrickConfig.from_dir(tmp_path / "adapter"))
    brick.check_names(model.config)
    brick.check_fits(model.config)  # what the executors check before they load a brick


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_moe_experts_train_as_target_parameters(family, tok, tmp_path):
    model_dir = _saved(family, tok, tmp_path / "model")
    model = _load(model_dir)
    assert lora_expert_parameters(model.config) == EXPERTS
    params = dict(model.named_parameters())
    for layer in range(2):
        for name in EXPERTS:
            assert params[f"model.layers.{layer}.{name}"].dim() == 3  # [experts, out, in]: no nn.Linear to target
    result = train_lora(model, tok, ROWS, replace(QUICK, target_parameters=EXPERTS))
    experts = {k: v for k, v in result.model.named_parameters() if "experts" in k and "lora_B" in k}
    assert len(experts) == 2 * 2 and all(v.abs().max() > 0 for v in experts.values())  # both weights, both layers
    _loads_back_the_same(result, model_dir, tmp_path / "adapter")


def test_dense_families_have_no_expert_parameters():
    assert all(lora_expert_parameters(f) == () for f, fam in FAMILIES.items() if fam.ffn != "moe")
    assert all(lora_expert_parameters(f) == EXPERTS for f, fam in FAMILIES.items() if fam.ffn == "moe")


def _opt():
    from transformers import OPTConfig, OPTForCausalLM

    return OPTForCausalLM(OPTConfig(vocab_size=50, hidden_size=16, ffn_dim=32, num_hidden_layers=1,
                                    num_attention_heads=2, word_embed_proj_dim=16, max_position_embeddings=32))


def test_an_unknown_family_falls_back_to_its_linear_layers(monkeypatch, caplog):
    import bricks.families as families

    model = _opt()  # OPT has no entry in FAMILIES: the linear layers of its blocks, in model order
    scanned = ("k_proj", "v_proj", "q_proj", "out_proj", "fc1", "fc2")
    assert "opt" not in FAMILIES and lora_target_modules(model) == scanned
    monkeypatch.setitem(families.FAMILIES, "opt", FAMILIES["llama"])  # an entry that does not describe the model
    with caplog.at_level("WARNING", logger="bricks.training.targets"):
        assert lora_target_modules(model) == scanned
    assert "model type opt lacks the family's LoRA targets o_proj, gate_proj, up_proj, down_proj" in caplog.text
