"""BaseOnly: a PeftModel runs as its base model inside the context and as itself after, adapters loaded later
included, as PEFT's own disable_adapter does."""

import torch
from peft import LoraConfig, get_peft_model

from bricks.lora.base_only import BaseOnly


def _lora(model, name, seed):
    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"], init_lora_weights=False)
    if hasattr(model, "add_adapter") and hasattr(model, "peft_config"):
        model.add_adapter(name, cfg)
        return model
    return get_peft_model(model, cfg, adapter_name=name)


def test_base_only_matches_peft_disable_adapter(tiny):
    model, _ = tiny
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        base = model(ids).logits.clone()
        peft = _lora(model, "first", 0).eval()
        adapted = peft(ids).logits.clone()
        switch = BaseOnly()
        with switch(peft):
            assert torch.allclose(peft(ids).logits, base, atol=1e-6)
        assert torch.allclose(peft(ids).logits, adapted)  # on again after the context
        assert not torch.allclose(adapted, base)

        _lora(peft, "second", 1)  # a later adapter is switched off too (the layer list follows the loaded adapters)
        peft.set_adapter("second")
        with switch(peft):
            assert torch.allclose(peft(ids).logits, base, atol=1e-6)
        with peft.disable_adapter():
            assert torch.allclose(peft(ids).logits, base, atol=1e-6)
        assert not torch.allclose(peft(ids).logits, base)
        peft.unload()  # leave the module-scoped tiny model as it was


def test_a_model_without_adapters_runs_unchanged(tiny):
    model, _ = tiny
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad(), BaseOnly()(model):
        assert model(ids).logits.shape == (1, 3, model.config.vocab_size)
