"""The model zoo shared by the zoo tests: tiny random models of the families people use, saved with
save_pretrained and loaded back (no download). `tests/` is on sys.path (its conftest.py), so tests import this
module as `zoo_models`."""

from pathlib import Path

SMALL = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# family -> (config class, model class, config overrides, LoRA target modules)
ZOO = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}, ["q_proj", "v_proj", "gate_proj", "down_proj"]),
    "mistral": ("MistralConfig", "MistralForCausalLM", {}, ["q_proj", "k_proj", "up_proj"]),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}, ["q_proj", "o_proj", "gate_proj"]),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}, ["q_proj", "v_proj", "down_proj"]),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 16}, ["q_proj", "o_proj", "up_proj"]),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}, ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}, ["q_proj", "k_proj", "gate_proj", "down_proj"]),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {}, ["query_key_value", "dense", "dense_h_to_4h",
                                                             "dense_4h_to_h"]),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {"n_inner": 128, "n_positions": 64}, ["c_attn", "c_proj", "c_fc"]),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", {"num_local_experts": 4, "num_experts_per_tok": 2},
                ["q_proj", "v_proj"]),
}


def save_zoo_model(family: str, folder: Path, tokenizer=None, **overrides) -> Path:
    """A tiny random model of `family` (seed 0) saved to `folder`; with `tokenizer`, on its vocabulary and special
    tokens, saved beside it (what an engine that loads the folder needs)."""
    import torch
    import transformers

    config_cls, model_cls, extra, _ = ZOO[family]
    settings = {**SMALL, **extra, **overrides}
    if tokenizer is not None:
        settings.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    getattr(transformers, model_cls)(getattr(transformers, config_cls)(**settings)).save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return Path(folder)
