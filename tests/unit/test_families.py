"""bricks.families: every entry describes the model transformers really builds (checked on skeletons on the meta
device), and a family without an entry gets one clear error."""

import pytest
import torch

from bricks.emergent.layout import FfnLayoutError, ffn_layout
from bricks.families import FAMILIES, Family, UnsupportedFamilyError, family_for, intermediate_size, module_dims

SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, pad_token_id=0)


def _skeleton(model_type: str):
    transformers = pytest.importorskip("transformers")
    try:
        cfg = transformers.AutoConfig.for_model(model_type, **SMALL)
    except (KeyError, ValueError):
        pytest.skip(f"this transformers has no {model_type!r}")
    with torch.device("meta"):
        return cfg, transformers.AutoModelForCausalLM.from_config(cfg)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_entry_matches_the_model_transformers_builds(model_type):
    cfg, model = _skeleton(model_type)
    layers = [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] == FAMILIES[model_type].layers]
    layer = layers[0][0]
    for key, (fan_in, fan_out) in module_dims(cfg).items():
        found = [m for n, m in layer.named_modules() if n == key or n.endswith("." + key)]
        assert len(found) == 1, (key, [n for n, _ in layer.named_modules()])
        w = found[0].weight
        shape = tuple(w.shape) if type(found[0]).__name__ == "Conv1D" else tuple(w.shape)[::-1]
        assert shape == (fan_in, fan_out), key
    if FAMILIES[model_type].ffn == "moe":
        with pytest.raises(FfnLayoutError, match="mixture of experts") as e:
            ffn_layout(model)
        assert "\n" not in str(e.value) and "expected" in str(e.value)
    else:
        layout = ffn_layout(model)
        assert (layout.num_layers, layout.intermediate_size) == (2, intermediate_size(cfg))
        assert layout.model_type == model_type and layout.family is FAMILIES[model_type]


def test_an_unknown_family_is_named_with_the_known_ones():
    with pytest.raises(UnsupportedFamilyError, match=r"model type 'bert' is not a family brickwork knows \(known: "
                                                     r".*llama.*phi3"):
        family_for("bert")
    with pytest.raises(ValueError, match="a gated FFN needs up, down and gate"):
        Family("gated", up="up_proj", down="down_proj")
    with pytest.raises(ValueError, match="attention 'mqa'"):
        Family("plain", up="fc1", down="fc2", attention="mqa")


def test_an_unknown_model_type_is_matched_by_its_layout_or_refused_naming_it():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                                         num_attention_heads=2))
    model.config.model_type = "my_llama"  # a custom family laid out like Llama
    layout = ffn_layout(model)
    assert layout.family.ffn == "gated" and layout.intermediate_size == 16
    model.model.layers[0].mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 8))
    with pytest.raises(FfnLayoutError) as e:
        ffn_layout(model)
    msg = str(e.value)
    assert "\n" not in msg and "model type 'my_llama'" in msg and "layers.0.mlp (Sequential with 0: Linear" in msg
    assert "expected one of: layers[i] with mlp.gate_proj" in msg and "mlp.gate_up_proj" in msg and "c_fc" in msg
