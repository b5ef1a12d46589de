"""MoE experts as emergent bricks (#20), on tiny random MoE models built by the test (no download): expert use
profiled per skill, an expert-subset brick whose router picks its top-k among the kept experts only (checked
where the experts receive their routing), the quality gate, and a brick routed to and run end to end on the
transformers executor; a brick that does not fit is refused in one line."""

import pytest
import torch

from bricks.errors import BrickworkError, IncompatibleBrickError
from bricks.expert_mask import ExpertProfile, apply_expert_masks, moe_dims, moe_layout, profile_experts
from bricks.expert_mask.discover import (
    add_expert_candidates,
    expert_candidates,
    expert_outputs,
    gate_expert_candidates,
    select_experts,
    write_expert_brick,
)
from bricks.rows import InstructionRow

E, K = 8, 2  # experts per MoE layer, experts per token
SKILLS = {"shout": ("Shout the text.", ["hello", "quiet", "abc", "kite", "river", "stone"]),
          "count": ("Count the letters.", ["aaa", "bcd", "zz", "plane", "xy", "mouse"])}


def _build(folder, family: str):
    import transformers
    from transformers import AutoTokenizer

    from bricks.toyworld.paths import world_model_dir

    tok = AutoTokenizer.from_pretrained(world_model_dir())  # the toy world's character tokenizer
    common = dict(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, num_experts_per_tok=K,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    if family == "mixtral":
        cfg = transformers.MixtralConfig(**common, intermediate_size=64, num_local_experts=E)
        model = transformers.MixtralForCausalLM(cfg)
    else:  # layer 0 dense, layer 1 MoE with a shared expert; top-k weights not renormalised (norm_topk_prob off)
        cfg = transformers.Qwen2MoeConfig(**common, intermediate_size=64, moe_intermediate_size=32,
                                          shared_expert_intermediate_size=32, num_experts=E, mlp_only_layers=[0])
        model = transformers.Qwen2MoeForCausalLM(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert model.config.model_type == family
    return model, tok


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixtral")
    model, tok = _build(folder, "mixtral")
    return folder, model, tok


def _prompts():
    from bricks.prompt import DEFAULT_TEMPLATE

    return [(s, DEFAULT_TEMPLATE.render(instr, w)) for s, (instr, words) in SKILLS.items() for w in words]


class _Routed:
    """Records the expert indices [T, k] every MoE layer's experts are run with (a pre-hook on `experts`)."""

    def __init__(self, model):
        self.seen: dict[int, set[int]] = {}
        self.handles = [router_block.experts.register_forward_pre_hook(self._hook(i)) for i, router_block in
                        ((i, layer.mlp) for i, layer in enumerate(model.model.layers)) if hasattr(router_block,
                                                                                                  "experts")]

    def _hook(self, layer):
        def pre(module, args):
            self.seen.setdefault(layer, set()).update(int(x) for x in args[1].flatten())
        return pre

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _logits(model):
    ids = torch.arange(3, 27).reshape(2, 12)
    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_profile_counts_every_real_tokens_top_k_and_round_trips(mixtral, tmp_path):
    _, model, tok = mixtral
    prompts = _prompts()
    profile = profile_experts(model, tok, prompts, batch_size=5)  # batches that mix skills and lengths (padding)
    assert profile.skills == ["shout", "count"] and profile.moe_layers == (0, 1) and profile.top_k == K
    want = {s: sum(len(tok(p).input_ids) for k, p in prompts if k == s) for s in SKILLS}
    assert profile.tokens.tolist() == [want["shout"], want["count"]] and profile.prompts.tolist() == [6, 6]
    assert torch.allclose(profile.usage().sum(-1), torch.full((2, 2), float(K)))  # k experts per real token
    assert torch.allclose(profile.weight.sum(-1), profile.tokens[:, None].expand(2, 2))  # weights renormalised
    assert not torch.equal(profile.usage()[0], profile.usage()[1])  # the skills route differently
    path = tmp_path / "experts.safetensors"
    profile.save(path)
    back = ExpertProfile.load(path)
    assert back.skills == profile.skills and back.moe_layers == (0, 1) and torch.equal(back.selected, profile.selected)
    again = profile_experts(model, tok, prompts, batch_size=12)  # other batches, same counts
    assert torch.equal(again.selected, profile.selected)
    masks = select_experts(profile, "shout", keep=0.5)
    for layer, m in masks.items():
        assert int(m.sum()) == E // 2
        assert profile.usage()[0, layer][m].min() >= profile.usage()[0, layer][~m].max()  # the most used ones
    assert int(select_experts(profile, "shout", keep=0.01)[0].sum()) == K  # never fewer than top_k


def test_expert_masks_route_among_the_kept_experts_only(mixtral):
    _, model, _ = mixtral
    dense = _logits(model)
    with apply_expert_masks(model, {0: torch.ones(E, dtype=torch.bool), 1: torch.ones(E, dtype=torch.bool)}):
        assert torch.equal(_logits(model), dense)  # every expert kept: the base model, exactly
    keep = {0: torch.tensor([1, 0, 1, 0, 1, 0, 1, 0], dtype=torch.bool), 1: torch.tensor([0, 0, 0, 0, 0, 1, 1, 0],
                                                                                          dtype=torch.bool)}
    for mode in ("keep", "ablate"):
        with apply_expert_masks(model, keep, mode), _Routed(model) as routed:
            masked = _logits(model)
        allowed = {i: {e for e in range(E) if bool(keep[i][e]) == (mode == "keep")} for i in keep}
        assert routed.seen[0] <= allowed[0] and routed.seen[1] <= allowed[1]
        assert mode == "ablate" or routed.seen[1] == {5, 6}  # exactly top_k kept: every token gets both
        assert not torch.allclose(masked, dense, atol=1e-4)
    assert torch.equal(_logits(model), dense)  # hooks removed
    with _Routed(model) as routed:
        _logits(model)
    assert routed.seen[0] - allowed[0] or routed.seen[1] - allowed[1]  # the base model does use the others
    few = {1: torch.tensor([0, 0, 0, 1, 0, 0, 0, 0], dtype=torch.bool)}
    with pytest.raises(BrickworkError) as e:
        with apply_expert_masks(model, few):
            pass
    assert str(e.value) == "expert mask for layer 1 keeps 1 experts, fewer than num_experts_per_tok 2"
    with pytest.raises(BrickworkError, match=r"expert mask for layer 0 has shape \[4\], expected \[8\]"):
        with apply_expert_masks(model, {0: torch.ones(4, dtype=torch.bool)}):
            pass
    assert torch.equal(_logits(model), dense)


def test_qwen2_moe_dense_layers_and_unnormalised_weights(tmp_path):
    model, tok = _build(tmp_path / "qwen2_moe", "qwen2_moe")
    dims = moe_dims(model.config)
    assert (dims.num_experts, dims.top_k, dims.moe_layers) == (E, K, (1,))
    assert list(moe_layout(model).routers) == [1]
    dense = _logits(model)
    with apply_expert_masks(model, {1: torch.ones(E, dtype=torch.bool)}):
        assert torch.equal(_logits(model), dense)
    with apply_expert_masks(model, {1: torch.arange(E) < 3}), _Routed(model) as routed:
        assert not torch.allclose(_logits(model), dense, atol=1e-4)
    assert routed.seen == {1: {0, 1, 2}}
    with pytest.raises(BrickworkError, match=r"^expert mask for layer 0, but the MoE layers are \[1\]$"):
        with apply_expert_masks(model, {0: torch.ones(E, dtype=torch.bool)}):
            pass
    profile = profile_experts(model, tok, _prompts()[:4])
    assert profile.selected[:, 0].sum() == 0 and torch.allclose(profile.usage()[:, 1].sum(-1), torch.tensor(2.0))
    import transformers

    with pytest.raises(IncompatibleBrickError, match=r"^model type 'llama' is not a mixture of experts; expert "
                                                     r"bricks need one of mixtral, qwen2_moe, qwen3_moe$"):
        moe_dims(transformers.LlamaConfig())


def _rows(model, tok, skill):
    """Held-out rows of `skill` whose gold answers are the base model's own (random weights: noise, but fixed)."""
    instr, words = SKILLS[skill]
    rows = [InstructionRow(f"{skill}{i}", instr, w + w[::-1], "", (skill,)) for i, w in enumerate(words)]
    base = expert_outputs(model, tok, [r.as_dict() for r in rows], max_new_tokens=6)
    return [InstructionRow(r.id, r.instruction, r.input, b.strip(), r.skills) for r, b in zip(rows, base)]


def test_expert_brick_gated_routed_and_run_on_the_transformers_executor(mixtral, tmp_path):
    from bricks import BaseModelRef, Library
    from bricks.fingerprint import model_fingerprint
    from index import HashingEmbedder
    from orchestrator import Orchestrator
    from orchestrator.executors.base import GenerationRequest
    from orchestrator.plan import BrickConfig, BrickRef, Decoding, Plan, Step
    from policies import TopOne

    folder, model, tok = mixtral
    profile = profile_experts(model, tok, _prompts())
    cands = expert_candidates(profile, {s: [instr] for s, (instr, _) in SKILLS.items()}, keep=0.5)
    assert [c.brick_id for c in cands] == ["experts-shout", "experts-count"]
    held = _rows(model, tok, "shout") + _rows(model, tok, "count")
    gated = gate_expert_candidates(model, tok, cands, held, max_new_tokens=6)
    for c in gated:
        assert c.retention.rows == c.retention.base_correct == 6  # the gold answers are the base model's
        assert c.metrics["density"] == 0.5 and 0.0 <= c.metrics["retention_validation"] <= 1.0
    lib = Library.create(tmp_path / "lib", BaseModelRef(name="tiny-mixtral", fingerprint=model_fingerprint(folder)),
                         ["Summarize the text."])
    added, refused = add_expert_candidates(lib, gated, min_retention=0.0, min_support=1,
                                           model_config=model.config)
    assert [b.key for b in added] == ["experts-shout@1", "experts-count@1"] and not refused
    brick = lib.get("experts-shout")
    assert brick.manifest.kind == "expert_mask" and brick.manifest.metrics["rows_validation"] == 6.0
    keep = gated[0].masks
    write_expert_brick(tmp_path / "all", {i: torch.ones(E, dtype=torch.bool) for i in (0, 1)}, brick_id="experts-all",
                       description="Every expert.", examples=["Whisper the text."], base_model=lib.base_model,
                       metrics={})
    lib.add(tmp_path / "all", model_config=model.config)
    bad = write_expert_brick(tmp_path / "bad", {0: torch.ones(4, dtype=torch.bool)}, brick_id="experts-bad",
                             description="Four experts.", examples=["Juggle the letters."],
                             base_model=lib.base_model, metrics={})
    with pytest.raises(IncompatibleBrickError) as e:
        lib.add(bad, model_config=model.config)
    assert str(e.value) == ("expert_mask brick experts-bad@1 does not fit the base model: layer 0 mask has 4 "
                            "experts, expected 8")
    lib.add(bad)  # without the model's config the library cannot tell; the orchestrator keeps it out of routing

    # the random model's retention is arbitrary: route by the index alone (no retention threshold)
    with Orchestrator.from_pretrained(folder, lib.path, embedder=HashingEmbedder(), decoding=Decoding(max_new_tokens=6),
                                      routing=TopOne(emergent_min_retention=None)) as orc:
        assert "layer 0 mask has 4 experts, expected 8" in orc.planner.excluded["experts-bad@1"]
        plan = orc.plan("Shout the text.", "hello")
        assert [(b.key, b.kind, b.role) for b in plan.steps[0].config.bricks] == [
            ("experts-shout@1", "expert_mask", "mask")]
        with _Routed(orc.executor.model) as routed:
            result = orc.run("Shout the text.", "hello")
        assert result.error is None and result.steps[0].bricks[0].key == "experts-shout@1"
        assert routed.seen[0] <= {e for e in range(E) if keep[0][e]} and routed.seen[1] <= {
            e for e in range(E) if keep[1][e]}
        every = orc.run("Whisper the text.", "hello")
        prompt = orc.render(every.plan, 0, "hello")
        whole = orc.executor.generate([GenerationRequest(prompt, BrickConfig(), Decoding(max_new_tokens=6))])
        assert every.steps[0].bricks[0].key == "experts-all@1" and every.output == whole[0]  # all kept: the base
        ref = BrickRef(id="experts-bad", version=1, kind="expert_mask")
        failed = orc.run_plan(Plan(instruction="Juggle.", steps=(Step(instruction="Juggle the letters.",
                                                                      config=BrickConfig(bricks=(ref,))),)))
        assert failed.error is not None and "\n" not in failed.error
        assert "layer 0 mask has 4 experts, expected 8" in failed.error
