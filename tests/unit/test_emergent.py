"""Emergent bricks on a tiny random Llama: FFN layout, streaming profile, masked == compact, discovery."""

import pytest
import torch

from bricks.emergent import FfnLayoutError, apply_masks, compact_ffn, ffn_layout, mask_density, profile_neurons
from bricks.emergent.discover import cluster_neurons, supervised_masks
from bricks.emergent.profile import NeuronProfile


def _logits(model, tok, text="Sort the letters.\nIn: abc\nOut: "):
    with torch.inference_mode():
        return model(input_ids=torch.tensor([tok(text).input_ids])).logits


def _random_masks(density=0.25, seed=1, layers=(0, 1)):
    g = torch.Generator().manual_seed(seed)
    return {i: torch.rand(64, generator=g) < density for i in layers}


def test_layout_found_and_unknown_layout_named():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=3,
                                         num_attention_heads=2))
    layout = ffn_layout(model)
    assert layout.num_layers == 3 and layout.intermediate_size == 16
    with pytest.raises(FfnLayoutError, match="no decoder layers found; expected model.layers"):
        ffn_layout(torch.nn.Linear(2, 2))
    model.model.layers[1].mlp = torch.nn.Identity()
    with pytest.raises(FfnLayoutError, match=r"layers.1.mlp \(Identity\) is not a gated FFN"):
        ffn_layout(model)


@pytest.mark.parametrize("mode", ["keep", "ablate"])
def test_masked_and_compact_give_the_same_logits(tiny, mode):
    model, tok = tiny
    masks = _random_masks()
    dense = _logits(model, tok)
    with apply_masks(model, masks, mode):
        masked = _logits(model, tok)
    with compact_ffn(model, masks, mode):
        compact = _logits(model, tok)
        assert model.model.layers[0].mlp.gate_proj.out_features == int((masks[0] if mode == "keep" else ~masks[0]).sum())
    assert torch.allclose(masked, compact, atol=1e-5)
    assert not torch.allclose(masked, dense, atol=1e-3)
    assert torch.equal(_logits(model, tok), dense)  # everything restored
    assert model.model.layers[0].mlp.gate_proj.out_features == 64


def test_full_mask_is_dense_and_empty_layer_skips_the_ffn(tiny):
    model, tok = tiny
    dense = _logits(model, tok)
    with apply_masks(model, {0: torch.ones(64, dtype=torch.bool)}):
        assert torch.allclose(_logits(model, tok), dense, atol=1e-6)
    empty = {0: torch.zeros(64, dtype=torch.bool)}
    with apply_masks(model, empty):
        masked = _logits(model, tok)
    with compact_ffn(model, empty):
        compact = _logits(model, tok)
    original = model.model.layers[0].mlp.forward
    model.model.layers[0].mlp.forward = lambda x: x * 0
    try:
        skipped = _logits(model, tok)
    finally:
        model.model.layers[0].mlp.forward = original
    assert torch.allclose(masked, skipped, atol=1e-5) and torch.allclose(compact, skipped, atol=1e-5)
    assert mask_density(empty, 2, 64) == pytest.approx(0.5)


def test_bad_masks_name_layer_and_shape(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match=r"layer 0 has shape \[10\], expected \[64\]"):
        with apply_masks(model, {0: torch.ones(10, dtype=torch.bool)}):
            pass
    with pytest.raises(ValueError, match=r"layer 5, but the model has layers 0..1"):
        with compact_ffn(model, {5: torch.ones(64, dtype=torch.bool)}):
            pass
    with pytest.raises(ValueError, match="unknown mask mode 'drop'"):
        with apply_masks(model, {0: torch.ones(64, dtype=torch.bool)}, "drop"):
            pass


def _prompts(n):
    words = ["abc", "hello", "zzz", "kite", "moon"]
    for i in range(n):
        skill = ("reverse", "count", "add")[i % 3]
        yield skill, f"{skill} this.\nIn: {words[i % 5]}{i}\nOut: "


def test_profile_streams_with_constant_state(tiny, tmp_path):
    model, tok = tiny
    small = profile_neurons(model, tok, _prompts(30), batch_size=8, reservoir=16)
    big = profile_neurons(model, tok, _prompts(300), batch_size=8, reservoir=16)
    assert small.skills == ["reverse", "count", "add"] and big.count.tolist() == [100, 100, 100]
    assert small.sum_abs.shape == big.sum_abs.shape == (3, 2, 64) and big.reservoir.shape == (16, 2, 64)
    assert (big.sparsity() >= 0).all() and (big.sparsity() <= 1).all()
    spec = big.specialization()
    assert spec.shape == (3, 2, 64) and torch.isfinite(spec).all()
    big.save(tmp_path / "p.safetensors")
    again = NeuronProfile.load(tmp_path / "p.safetensors")
    assert again.skills == big.skills and torch.equal(again.sum_abs, big.sum_abs)
    assert again.reservoir_prompts == big.reservoir_prompts

    masks = supervised_masks(big, "count", budget=0.25)
    assert all(int(m.sum()) == 16 for m in masks.values())
    glob = supervised_masks(big, "count", budget=0.25, criterion="active", scope="global")
    assert sum(int(m.sum()) for m in glob.values()) == 32  # the same total, shared out by rank across layers
    score = big.mean_abs[big.skills.index("count")]
    kept_min = min(float(score[i][m].min()) for i, m in glob.items() if m.any())
    dropped_max = max(float(score[i][~m].max()) for i, m in glob.items() if (~m).any())
    assert kept_min >= dropped_max
    with pytest.raises(ValueError, match="criterion 'contribution' needs down_norms"):
        supervised_masks(big, "count", criterion="contribution")
    weights = torch.ones(2, 64)
    weights[1] = 0  # a layer that writes nothing gets nothing
    contrib = supervised_masks(big, "count", budget=0.25, criterion="contribution", scope="global",
                               down_norms=weights)
    assert int(contrib[1].sum()) == 0 and int(contrib[0].sum()) == 32
    with pytest.raises(ValueError, match="unknown scope 'model'"):
        supervised_masks(big, "count", scope="model")
    with pytest.raises(ValueError, match="skill 'sort' was not profiled"):
        supervised_masks(big, "sort")
    parts = cluster_neurons(big, 4, iterations=3)
    sizes = [sum(int(m.sum()) for m in p.masks.values()) for p in parts]
    assert sizes == [32, 32, 32, 32]  # balanced, and every neuron in exactly one partition
    assert torch.stack([torch.stack([p.masks[i] for i in range(2)]) for p in parts]).sum(0).eq(1).all()
    assert all(len(p.top_prompts) == 5 for p in parts)
