"""The model families people use, each as a tiny random model saved by the test and loaded back (no download):
its FFN layout is found from its family's description, masked == compact for keep and ablate, and a LoRA adapter
on its own attention/MLP modules fits while a wrong-shape one is refused. The mixture of experts is refused in one
line naming its layout."""

from types import SimpleNamespace

import pytest
import torch
from zoo_models import SMALL, ZOO, save_zoo_model

from bricks.emergent import FfnLayoutError, apply_masks, compact_ffn, ffn_layout
from bricks.errors import IncompatibleBrickError
from bricks.lora.brick import ADAPTER_WEIGHTS, LoraBrick, LoraBrickConfig

DENSE = [f for f in ZOO if f != "mixtral"]


@pytest.fixture(scope="module", params=sorted(ZOO))
def zoo(request, tmp_path_factory):
    """(family, model loaded back from its saved folder, its config)."""
    import transformers

    family = request.param
    folder = save_zoo_model(family, tmp_path_factory.mktemp(family))
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert model.config.model_type == family
    return family, model, model.config


def _logits(model):
    ids = torch.arange(3, 19).reshape(2, 8)
    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_ffn_layout_found_or_moe_refused_in_one_line(zoo):
    family, model, cfg = zoo
    if family == "mixtral":
        with pytest.raises(FfnLayoutError) as e:
            ffn_layout(model)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith("mixtral: layers.0.mlp (MixtralSparseMoeBlock with")
        assert "mixture of experts" in msg and "supported FFN layouts: layers[i] with mlp.gate_proj" in msg
        with pytest.raises(FfnLayoutError, match="mixture of experts"):
            with apply_masks(model, {0: torch.ones(128, dtype=torch.bool)}):
                pass
        return
    layout = ffn_layout(model)
    assert (layout.num_layers, layout.intermediate_size, layout.model_type) == (2, 128, family)
    seen = []
    handles = layout.hook_neuron_inputs(lambda i: lambda module, args: seen.append((i, tuple(args[0].shape))))
    try:
        _logits(model)
    finally:
        for h in handles:
            h.remove()
    assert seen == [(0, (2, 8, 128)), (1, (2, 8, 128))]  # the hook sees the neurons' activations
    assert layout.down_norms().shape == (2, 128)


@pytest.mark.parametrize("mode", ["keep", "ablate"])
def test_masked_equals_compact(zoo, mode):
    family, model, _ = zoo
    if family == "mixtral":
        pytest.skip("mixture of experts: refused (test_ffn_layout_found_or_moe_refused_in_one_line)")
    g = torch.Generator().manual_seed(3)
    masks = {i: torch.rand(128, generator=g) < 0.5 for i in (0, 1)}
    kept = int((masks[0] if mode == "keep" else ~masks[0]).sum())
    dense = _logits(model)
    with apply_masks(model, masks, mode):
        masked = _logits(model)
    layout = ffn_layout(model)
    with compact_ffn(model, masks, mode):
        compact = _logits(model)
        down = getattr(layout.mlps[0], layout.family.down)
        assert down.weight.shape[0 if layout.family.conv1d else 1] == kept  # the matrices really shrank
    assert torch.allclose(masked, compact, atol=1e-5), (masked - compact).abs().max()
    assert not torch.allclose(masked, dense, atol=1e-4)
    assert torch.equal(_logits(model), dense)  # everything put back


def _adapter(model, targets, folder, r=4) -> LoraBrick:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    cfg = LoraConfig(r=r, lora_alpha=8, target_modules=targets, init_lora_weights=False,
                     fan_in_fan_out=type(model).__name__ == "GPT2LMHeadModel")
    peft = get_peft_model(model, cfg)
    try:
        peft.save_pretrained(str(folder))
    finally:
        peft.unload()  # the shared module-scoped model gets its plain modules back
    return LoraBrick(folder, SimpleNamespace(key=f"{folder.name}@1", id=folder.name), LoraBrickConfig.from_dir(folder))


def test_lora_fits_and_a_wrong_shape_is_refused(zoo, tmp_path):
    from safetensors.torch import load_file, save_file

    family, model, cfg = zoo
    brick = _adapter(model, ZOO[family][3], tmp_path / family)
    brick.check_names(cfg)
    brick.check_fits(cfg)
    other_family = "phi3" if family != "phi3" else "llama"  # checked by the other family's description: refused
    import transformers

    other = getattr(transformers, ZOO[other_family][0])(**SMALL)
    with pytest.raises(IncompatibleBrickError, match="does not fit the base model"):
        brick.check_fits(other)
    tensors = load_file(str(brick.folder / ADAPTER_WEIGHTS))
    name = sorted(k for k in tensors if ".lora_B." in k)[-1]  # an output-side tensor: its fan_out is checked
    tensors[name] = torch.zeros(tensors[name].shape[0] + 8, tensors[name].shape[1])
    save_file(tensors, str(brick.folder / ADAPTER_WEIGHTS))
    with pytest.raises(IncompatibleBrickError) as e:
        brick.check_fits(cfg)
    assert "does not fit the base model" in str(e.value) and f"shape [{tensors[name].shape[0]}, 4]" in str(e.value)
    assert "\n" not in str(e.value)
