"""The expert_mask brick kind without a model: registry entry, format, checks against a config, one mask kind per
step, combination, and the vLLM executor's one-line refusal."""

from types import SimpleNamespace

import pytest
import torch

from bricks import BaseModelRef, Library
from bricks.errors import BrickworkError, ConfigError, IncompatibleBrickError, IntegrityError
from bricks.expert_mask import EXPERT_MASK_FILE, ExpertMaskBrick, ExpertProfile, expert_density, kept_experts
from bricks.expert_mask.discover import write_expert_brick
from bricks.kinds import get_kind
from orchestrator.executors.base import GenerationRequest, UnsupportedConfigError, config_masks, mask_target
from orchestrator.plan import BrickConfig, BrickRef

BASE = BaseModelRef(name="tiny-moe", fingerprint="sha256:aaa")


def _mixtral(experts=8, top_k=2, layers=2):
    from transformers import MixtralConfig

    return MixtralConfig(vocab_size=32, hidden_size=16, intermediate_size=16, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, num_local_experts=experts,
                         num_experts_per_tok=top_k)


def _brick(tmp_path, name, masks, examples=("Shout the text.",)):
    folder = write_expert_brick(tmp_path / name, masks, brick_id=name, description=f"Experts of {name}.",
                                examples=list(examples), base_model=BASE, metrics={"density": 0.5})
    from bricks.library import verify_brick_folder

    brick = verify_brick_folder(folder)
    return ExpertMaskBrick.from_dir(brick.path, brick.manifest)


def test_kind_is_registered_as_a_mask_of_experts():
    kind = get_kind("expert_mask")
    assert (kind.role, kind.artifact, kind.restricts) == ("mask", EXPERT_MASK_FILE, "experts")
    assert kind.combines_by == ("union", "intersection") and get_kind("ffn_mask").restricts == "neurons"
    ref = BrickRef(id="e", version=1, kind="expert_mask")
    assert ref.role == "mask" and BrickConfig(bricks=(ref,)).masks == (ref,)


def test_brick_round_trips_and_is_checked_against_the_config(tmp_path):
    keep = torch.tensor([1, 1, 0, 0, 1, 0, 0, 0], dtype=torch.bool)
    brick = _brick(tmp_path, "shout", {0: keep, 1: ~keep})
    back = brick.masks()
    assert torch.equal(back[0], keep) and torch.equal(back[1], ~keep) and brick.density() == 0.5
    brick.check_fits(_mixtral())
    with pytest.raises(IncompatibleBrickError) as e:
        brick.check_fits(_mixtral(experts=4))
    assert str(e.value) == ("expert_mask brick shout@1 does not fit the base model: layer 0 mask has 8 experts, "
                            "expected 4; layer 1 mask has 8 experts, expected 4")
    with pytest.raises(IncompatibleBrickError, match=r"layer 0 keeps 3 experts, fewer than num_experts_per_tok 4$"):
        brick.check_fits(_mixtral(top_k=4))
    with pytest.raises(IncompatibleBrickError, match=r"layer 1 is not a MoE layer \(MoE layers: \[0\]\)$"):
        brick.check_fits(_mixtral(layers=1))
    from transformers import LlamaConfig

    with pytest.raises(IncompatibleBrickError) as e:
        brick.check_fits(LlamaConfig())
    assert str(e.value) == ("expert_mask brick shout@1 does not fit the base model: model type 'llama' is not a "
                            "mixture of experts; expert bricks need one of mixtral, qwen2_moe, qwen3_moe")
    (brick.folder / EXPERT_MASK_FILE).write_bytes(b"not safetensors")
    with pytest.raises(IntegrityError, match=f"expert_mask brick shout@1: {EXPERT_MASK_FILE} cannot be read"):
        brick.masks()


def test_keep_ablate_and_density():
    m = {1: torch.tensor([1, 0, 1, 0], dtype=torch.bool)}
    assert torch.equal(kept_experts(m, "ablate")[1], torch.tensor([0, 1, 0, 1], dtype=torch.bool))
    assert expert_density(m, (0, 1), 4) == 0.75  # layer 0 unlisted: every expert kept
    with pytest.raises(ConfigError, match="unknown mask mode 'half'"):
        kept_experts(m, "half")


def test_one_mask_kind_per_step_and_expert_masks_combine(tmp_path):
    lib = Library.create(tmp_path / "lib", BASE, ["Summarize the text."])
    a = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0], dtype=torch.bool)
    b = torch.tensor([0, 1, 1, 0, 0, 0, 0, 0], dtype=torch.bool)
    for name, mask in (("ea", a), ("eb", b)):
        lib.add(write_expert_brick(tmp_path / name, {0: mask}, brick_id=name, description="Experts.",
                                   examples=[f"Do {name}."], base_model=BASE, metrics={}))
    refs = tuple(BrickRef(id=n, version=1, kind="expert_mask") for n in ("ea", "eb"))
    union = config_masks(lib, BrickConfig(bricks=refs), _mixtral())
    inter = config_masks(lib, BrickConfig(bricks=refs, mask_merge="intersection"), _mixtral())
    assert torch.equal(union[0], a | b) and torch.equal(inter[0], a & b) and list(union) == [0]
    assert mask_target(BrickConfig(bricks=refs)) == "experts" and mask_target(BrickConfig()) is None
    mixed = BrickConfig(bricks=(refs[0], BrickRef(id="n", version=1, kind="ffn_mask")))
    with pytest.raises(ConfigError) as e:
        config_masks(lib, mixed, _mixtral())
    assert "\n" not in str(e.value) and str(e.value).startswith("configuration union(ea@1,n@1) mixes FFN-neuron and "
                                                                "expert mask bricks (ea@1: expert_mask, n@1: ffn_mask)")


def test_vllm_executor_refuses_expert_bricks_in_one_line():
    from orchestrator.executors.vllm.executor import VllmExecutor

    stub = SimpleNamespace(prompt_problems=lambda reqs: [None] * len(reqs), _lora_request=lambda config: None,
                           _packed_mask=lambda config: None)
    ref = BrickRef(id="experts-shout", version=1, kind="expert_mask")
    with pytest.raises(UnsupportedConfigError) as e:
        VllmExecutor.check(stub, [GenerationRequest("p", BrickConfig(bricks=(ref,)))])
    assert str(e.value) == ("vllm executor cannot run: experts-shout@1: expert_mask brick(s) experts-shout@1 are not "
                            "supported on vLLM; use the transformers executor")
    VllmExecutor.check(stub, [GenerationRequest("p", BrickConfig())])  # the base model: nothing refused


def test_profile_file_that_is_not_a_profile_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"selected": torch.zeros(1, 2, 4)}, str(tmp_path / "p.safetensors"))
    with pytest.raises(BrickworkError, match=r"not an expert profile \(missing weight, tokens, prompts, skills, "
                                             r"moe_layers, top_k\)$"):
        ExpertProfile.load(tmp_path / "p.safetensors")


def test_expert_usage_plots_are_labelled(tmp_path):
    pytest.importorskip("matplotlib")
    from orchestrator.expert_analysis import expert_usage_figures, write_expert_plots

    selected = torch.zeros(2, 2, 4)
    selected[0, 1] = torch.tensor([5.0, 5.0, 0.0, 0.0])  # skill a: experts 0 and 1 on its 5 tokens
    selected[1, 1] = torch.tensor([0.0, 2.0, 2.0, 0.0])  # skill b: experts 1 and 2 on its 2 tokens
    profile = ExpertProfile(["a", "b"], selected, selected.clone(), torch.tensor([5.0, 2.0]), torch.tensor([1, 1]),
                            (1,), 2)
    figures = expert_usage_figures(profile)
    assert list(figures) == ["experts_usage_layer1", "experts_specialization_layer1"]
    ax, cbar = figures["experts_usage_layer1"].axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("expert", "skill")
    assert cbar.get_ylabel() == "share of the skill's tokens routed to the expert"
    assert ax.images[0].get_clim() == (0.0, 2.0) and ax.images[0].get_array().tolist() == [[1, 1, 0, 0], [0, 1, 1, 0]]
    ax, cbar = figures["experts_specialization_layer1"].axes
    assert ax.images[0].get_array().tolist() == [[1, 0, -1, 0], [-1, 0, 1, 0]]
    assert ax.images[0].get_clim() == (-1.0, 1.0) and cbar.get_ylabel().startswith("share routed minus")
    paths = write_expert_plots(profile, tmp_path / "plots")
    assert [p.name for p in paths] == ["experts_usage_layer1.png", "experts_specialization_layer1.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
