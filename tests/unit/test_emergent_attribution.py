"""Gold-answer attribution of FFN neurons on a tiny random Llama: batching, dead neurons, keep-only, wiring."""

import pytest
import torch
import torch.nn.functional as F

from bricks.emergent import apply_masks, profile_neurons
from bricks.emergent.attribution import attribution_scores
from bricks.emergent.discover import down_proj_norms, supervised_masks
from bricks.emergent.profile import NeuronProfile


def _examples(n):
    words = ["alpha", "kite", "planet", "zo", "river"]
    for i in range(n):
        skill = ("reverse", "count")[i % 2]
        word = words[i % 5] * (1 + i % 3)  # different lengths: batches need padding
        yield skill, f"{skill} this.\nIn: {word}\nOut: ", word[::-1] if skill == "reverse" else str(len(word))


def _answer_nll(model, tok, examples):
    """Summed NLL of answer + EOS given the prompt, one example at a time (no padding)."""
    total = 0.0
    with torch.inference_mode():
        for _, p, a in examples:
            pi = tok(p).input_ids
            ai = tok(p + a).input_ids[len(pi):] + [tok.eos_token_id]
            logits = model(input_ids=torch.tensor([pi + ai])).logits[0, len(pi) - 1: -1]
            total += float(F.cross_entropy(logits, torch.tensor(ai), reduction="sum"))
    return total


def test_scores_are_per_example_means_whatever_the_batching(tiny):
    model, tok = tiny
    ex = list(_examples(10))
    one = attribution_scores(model, tok, ex, batch_size=1)
    many = attribution_scores(model, tok, iter(ex), batch_size=4)  # padded batches
    assert set(one) == {"reverse", "count"} and one["count"].shape == (2, 64)
    for skill in one:
        assert torch.allclose(one[skill], many[skill], rtol=1e-4, atol=1e-7)
        assert (one[skill] >= 0).all() and one[skill].sum() > 0
    assert all(p.grad is None for p in model.parameters())  # weights untouched, no gradient left behind
    assert not model.training


def test_first_example_score_matches_autograd_by_hand(tiny):
    model, tok = tiny
    skill, p, a = next(_examples(1))
    pi = tok(p).input_ids
    ai = tok(p + a).input_ids[len(pi):] + [tok.eos_token_id]
    act = {}
    mlp = model.model.layers[1].mlp

    def keep(module, args):
        act["a"] = args[0]

    h = mlp.down_proj.register_forward_pre_hook(keep)
    try:
        logits = model(input_ids=torch.tensor([pi + ai])).logits[0, len(pi) - 1: -1]
        loss = F.cross_entropy(logits, torch.tensor(ai), reduction="sum")
        (g,) = torch.autograd.grad(loss, act["a"])
    finally:
        h.remove()
    expected = (act["a"].detach() * g).abs().sum((0, 1))  # [I]
    got = attribution_scores(model, tok, [(skill, p, a)])[skill][1]
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-7)


def test_a_neuron_that_writes_nothing_scores_zero_however_active(tiny):
    model, tok = tiny
    down = model.model.layers[0].mlp.down_proj
    saved = down.weight.detach().clone()
    with torch.no_grad():
        down.weight[:, 5] = 0  # neuron 5 of layer 0 still fires, but cannot change the output
    try:
        ex = list(_examples(6))
        scores = attribution_scores(model, tok, ex)
        prof = profile_neurons(model, tok, ((s, p + a) for s, p, a in ex))
    finally:
        with torch.no_grad():
            down.weight.copy_(saved)
    assert float(prof.mean_abs[0, 0, 5]) > 0
    assert float(scores["reverse"][0, 5]) == 0 and float(scores["count"][0, 5]) == 0


def test_keeping_the_most_attributed_neurons_beats_keeping_the_least(tiny):
    model, tok = tiny
    ex = list(_examples(12))
    prof = profile_neurons(model, tok, ((s, p + a) for s, p, a in ex))
    prof.add_attribution(attribution_scores(model, tok, ex))
    best = supervised_masks(prof, "reverse", budget=0.3, criterion="attribution", scope="global")
    assert sum(int(m.sum()) for m in best.values()) == 38  # 30% of all 128 neurons, shared out by rank
    odd = supervised_masks(prof, "reverse", budget=0.31, criterion="attribution", scope="global")
    assert sum(int(m.sum()) for m in odd.values()) == 39  # never rounded above the budget (39.68)
    score = prof.attribution[prof.skills.index("reverse")]
    worst = {layer: torch.zeros(64, dtype=torch.bool) for layer in best}
    flat = torch.topk(-score.flatten(), sum(int(m.sum()) for m in best.values())).indices
    for i in flat.tolist():
        worst[i // 64][i % 64] = True
    rev = [e for e in ex if e[0] == "reverse"]
    dense = _answer_nll(model, tok, rev)
    with apply_masks(model, best, "keep"):
        kept_best = _answer_nll(model, tok, rev)
    with apply_masks(model, worst, "keep"):
        kept_worst = _answer_nll(model, tok, rev)
    assert abs(kept_best - dense) < abs(kept_worst - dense)


def test_profile_carries_attribution_through_save_and_load(tiny, tmp_path):
    model, tok = tiny
    ex = list(_examples(8))
    prof = profile_neurons(model, tok, ((s, p + a) for s, p, a in ex))
    with pytest.raises(ValueError, match="criterion 'attribution' needs attribution scores"):
        supervised_masks(prof, "count", criterion="attribution")
    with pytest.raises(ValueError, match="no attribution scores for skill.*count"):
        prof.add_attribution({"reverse": torch.zeros(2, 64)})
    prof.add_attribution(attribution_scores(model, tok, ex))
    assert prof.attribution.shape == (2, 2, 64)
    prof.save(tmp_path / "p.safetensors")
    again = NeuronProfile.load(tmp_path / "p.safetensors")
    assert torch.equal(again.attribution, prof.attribution)
    assert NeuronProfile.load(tmp_path / "p.safetensors").skills == prof.skills
    with pytest.raises(ValueError, match="unknown criterion 'loud'.*'attribution'"):
        supervised_masks(prof, "count", criterion="loud")
    norms = down_proj_norms(model)
    assert norms.shape == (2, 64) and torch.allclose(norms[1], model.model.layers[1].mlp.down_proj.weight.norm(dim=0))
