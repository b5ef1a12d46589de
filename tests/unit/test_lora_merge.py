"""`bricks.lora.merge`: merged LoRA tensors computed without a model equal PEFT's `add_weighted_adapter`, for
every merge method, on a tiny random Llama (hidden 64, 2 layers), DARE's seeded drops included."""

import json

import pytest
import torch

from bricks.lora.merge import LoraTensors, default_module_key, merge_loras, module_order
from bricks.training.export import save_adapter

METHODS = ["cat", "linear", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
           "dare_ties_svd", "magnitude_prune"]
SEED = 3


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Folders of random adapters: a (r 4, q/v, rsLoRA), b (r 4, q/k/v/down), c (r 6, all projections)."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("adapters")
    specs = {"a": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_rslora=True),
             "b": dict(r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "down_proj"]),
             "c": dict(r=6, lora_alpha=12, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"])}
    torch.manual_seed(1)
    model = None
    for name, spec in specs.items():
        cfg = LoraConfig(init_lora_weights=False, **spec)  # random A and B: every delta is non-zero
        if model is None:
            model = get_peft_model(_llama(), cfg, adapter_name=f"ad_{name}")
        else:
            model.add_adapter(f"ad_{name}", cfg)
        save_adapter(model, root / name, f"ad_{name}")
    return root


def _with_init(folder, tmp_path, init):
    """A copy of the adapter folder whose config says `init_lora_weights=init` (what PEFT's injection draws)."""
    import shutil

    out = tmp_path / f"{folder.name}-{init}"
    shutil.copytree(folder, out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**cfg, "init_lora_weights": init}))
    return out


def _peft_merge(folders, weights, method, density):
    """What the transformers executor does: load the folders into one PeftModel, seed, add_weighted_adapter."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    model = None
    names = [f"b_{i}" for i in range(len(folders))]
    for name, folder in zip(names, folders):
        if model is None:
            model = PeftModel.from_pretrained(_llama(), str(folder), adapter_name=name, is_trainable=False)
        else:
            model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model.add_weighted_adapter(names, weights, "merged", combination_type=method, density=density)
    return model, get_peft_model_state_dict(model, adapter_name="merged"), model.peft_config["merged"]


def _assert_same(ours: LoraTensors, theirs: dict, config):
    assert sorted(ours.tensors) == sorted(theirs)
    for key, t in theirs.items():
        assert ours.tensors[key].shape == t.shape, key
        assert ours.tensors[key].dtype == t.dtype, key
        assert torch.allclose(ours.tensors[key], t, rtol=1e-5, atol=1e-6), (key, (ours.tensors[key] - t).abs().max())
    assert ours.config["r"] == config.r and ours.config["lora_alpha"] == config.lora_alpha
    assert set(ours.config["target_modules"]) == set(config.target_modules)


@pytest.mark.parametrize("method", METHODS)
def test_pure_merge_equals_peft_add_weighted_adapter(adapters, tmp_path, method):
    folders = [_with_init(adapters / "a", tmp_path, True), adapters / "b"]  # init as the project's bricks: True
    density = None if method in ("cat", "linear", "svd") else 0.5
    weights = [0.7, 0.3]
    _, theirs, config = _peft_merge(folders, weights, method, density)
    ours = merge_loras([LoraTensors.from_dir(f) for f in folders], weights, method, density, seed=SEED)
    _assert_same(ours, theirs, config)
    if method.startswith("dare"):  # the drops depend on the seed: a wrong replay would not match by chance
        other = merge_loras([LoraTensors.from_dir(f) for f in folders], weights, method, density, seed=SEED + 1)
        assert any(not torch.equal(other.tensors[k], t) for k, t in theirs.items())


@pytest.mark.parametrize("method,init", [("dare_ties", False), ("dare_linear_svd", "gaussian")])
def test_dare_replays_the_draws_of_the_first_adapters_init(adapters, tmp_path, method, init):
    folders = [_with_init(adapters / "b", tmp_path, init), adapters / "a"]
    _, theirs, config = _peft_merge(folders, [0.4, 0.6], method, 0.3)
    order = module_order(_llama().config)
    ours = merge_loras([LoraTensors.from_dir(f) for f in folders], [0.4, 0.6], method, 0.3, seed=SEED,
                       module_order=order)
    _assert_same(ours, theirs, config)


@pytest.mark.parametrize("method", ["cat", "svd", "dare_ties_svd"])
def test_different_ranks_merge_like_peft_and_serve_the_same_outputs(adapters, tmp_path, method):
    from peft import PeftModel

    folders = [adapters / "c", adapters / "a", adapters / "b"]
    weights = [0.5, 0.25, 0.25]
    density = 0.6 if method.startswith("dare") else None
    model, theirs, config = _peft_merge(folders, weights, method, density)
    ours = merge_loras([LoraTensors.from_dir(f) for f in folders], weights, method, density, seed=SEED)
    _assert_same(ours, theirs, config)
    assert ours.rank == (14 if method == "cat" else 6)
    # the folder written from the pure merge, served by PEFT, computes what PEFT's own merged adapter computes
    (tmp_path / "m").mkdir()
    ours.save(tmp_path / "m")
    served = PeftModel.from_pretrained(_llama(), str(tmp_path / "m"), is_trainable=False)
    ids = torch.tensor([[1, 5, 7, 9, 11]])
    model.set_adapter("merged")
    with torch.no_grad():
        assert torch.allclose(served(ids).logits, model(ids).logits, atol=1e-5)
        assert not torch.allclose(served(ids).logits, _llama()(ids).logits, atol=1e-3)  # the adapter does act


def test_skeleton_module_order_is_the_default_order():
    order = module_order(_llama().config)
    projections = [n for n in order if n.endswith("_proj")]
    assert projections[:7] == [f"model.layers.0.{p}" for p in ("self_attn.q_proj", "self_attn.k_proj",
                                                              "self_attn.v_proj", "self_attn.o_proj",
                                                              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    assert sorted(projections, key=default_module_key) == projections
    assert sorted(["model.layers.10.mlp.up_proj", "model.layers.2.self_attn.q_proj"], key=default_module_key)[0] \
        == "model.layers.2.self_attn.q_proj"


def test_merge_refuses_what_it_cannot_reproduce(adapters, tmp_path):
    a, c = LoraTensors.from_dir(adapters / "a"), LoraTensors.from_dir(adapters / "c")
    with pytest.raises(ValueError, match="one rank, got ranks \\[4, 6\\]"):
        merge_loras([a, c], [0.5, 0.5], "ties", 0.5)
    with pytest.raises(ValueError, match="unknown merge method 'avg'"):
        merge_loras([a, c], [0.5, 0.5], "avg")
    with pytest.raises(ValueError, match="needs a density"):
        merge_loras([a, a], [0.5, 0.5], "dare_linear")
    dora = LoraTensors({**a.config, "use_dora": True}, a.tensors)
    with pytest.raises(ValueError, match="use_dora"):
        merge_loras([dora, a], [0.5, 0.5], "cat")
    with pytest.raises(ValueError, match="not in the model"):
        merge_loras([a, a], [0.5, 0.5], "cat", module_order=["model.layers.0.self_attn.q_proj"])
