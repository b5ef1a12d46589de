"""The FFN layouts of vLLM's model code that the worker's masks hook (no vLLM needed: modules named as vLLM's),
and masks applied to activations shaped [1, T, I] as vLLM's Transformers modeling backend runs them."""

import pytest
import torch
from torch import nn

from bricks.errors import ConfigError
from orchestrator.executors.vllm.masks import MaskTable
from orchestrator.executors.vllm.mlp_layout import find_mlps


def _model(mlp_names, layers=2, stack=("model", "layers"), layer_names=("self_attn",)):
    """A module tree shaped like a vLLM model: stack[0].stack[1].N with `layer_names` and an mlp of `mlp_names`."""
    def layer():
        block = nn.Module()
        for name in layer_names:
            setattr(block, name, nn.Identity())
        if mlp_names is not None:
            block.mlp = nn.Module()
            for name in mlp_names:
                setattr(block.mlp, name, nn.Linear(2, 2))
        return block

    root, inner = nn.Module(), nn.Module()
    setattr(inner, stack[1], nn.ModuleList([layer() for _ in range(layers)]))
    setattr(root, stack[0], inner)
    return root


@pytest.mark.parametrize("names, stack, layout, down", [
    (("gate_up_proj", "down_proj", "act_fn"), ("model", "layers"), "gated", "down_proj"),
    (("dense_h_to_4h", "dense_4h_to_h", "act"), ("gpt_neox", "layers"), "gpt_neox", "dense_4h_to_h"),
    (("c_fc", "c_proj", "act"), ("transformer", "h"), "gpt2", "c_proj"),
])
def test_each_layout_is_found_in_every_layer(names, stack, layout, down):
    model = _model(names, stack=stack)
    found, mlps = find_mlps(model, 2)
    assert (found.name, found.down, found.gated) == (layout, down, layout == "gated")
    assert sorted(mlps) == [0, 1] and mlps[1] is getattr(getattr(model, stack[0]), stack[1])[1].mlp


def test_a_mixture_of_experts_is_named_in_one_line():
    model = _model(None, layer_names=("self_attn", "block_sparse_moe"))
    with pytest.raises(ConfigError) as e:
        find_mlps(model, 2)
    assert str(e.value) == (
        "vLLM model Module: no FFN layout brickwork can mask: layer 0 (Module) holds self_attn, block_sparse_moe; "
        "expected layers.N.mlp with mlp.gate_up_proj + mlp.down_proj (gated, fused gate/up) or mlp.dense_h_to_4h + "
        "mlp.dense_4h_to_h (non-gated) or mlp.c_fc + mlp.c_proj (non-gated)")


def test_an_unknown_mlp_names_its_modules_and_missing_layers_are_named():
    with pytest.raises(ConfigError, match=r"its mlp \(Module\) holds fc1, fc2; expected layers\.N\.mlp with"):
        find_mlps(_model(("fc1", "fc2")), 2)
    with pytest.raises(ConfigError, match=r"found FFN \(mlp.gate_up_proj \+ mlp.down_proj \(gated, fused gate/up\)\) "
                                          r"in layers \[0, 1\], expected layers 0\.\.2"):
        find_mlps(_model(("gate_up_proj", "down_proj")), 3)


@pytest.mark.parametrize("static", [True, False])
def test_a_batch_dimension_keeps_each_tokens_own_mask(static):
    table = MaskTable(1, 4, dtype=torch.float32, device="cpu", compact=False, static=static)
    slot = table.add("m", torch.tensor([[True, False, True, False]]))
    table.set_batch([slot, 0], [1, 2], any_lora=False)  # token 0 masked, tokens 1 and 2 not
    h = torch.ones(1, 3, 4)
    want = torch.tensor([[[1.0, 0, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]]])
    assert torch.equal(table.apply(0, h), want)
    assert torch.equal(table.apply(0, h[0]), want[0])  # [T, I] as vLLM's own model classes run
