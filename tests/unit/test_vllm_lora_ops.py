"""The CPU LoRA ops that replace vLLM's torch punica ops: per-token math, both ways (runs and stacked)."""

import pytest
import torch

from orchestrator.executors.vllm import lora_ops as vllm_lora_ops
from orchestrator.executors.vllm.lora_ops import bgmv_expand, bgmv_expand_slice, bgmv_shrink


def _reference(x, a, b, idx, scaling):
    """Per token: scaling * B[slot] @ A[slot] @ x, and None for tokens without an adapter."""
    return [None if s < 0 else scaling * b[s, 0] @ (a[s, 0] @ x[t]) for t, s in enumerate(idx.tolist())]


SLOTS = {
    "one adapter": [2, 2, 2, 2, 2, 2],
    "runs with gaps": [0, 0, -1, -1, 2, 2],
    "interleaved": [0, -1, 2, 0, 1, 2],
}


@pytest.mark.parametrize("max_runs", [16, 1])  # 1: everything but one-run batches goes the stacked way
@pytest.mark.parametrize("name", list(SLOTS))
def test_shrink_then_expand_is_the_per_token_lora_and_skips_tokens_without_one(name, max_runs, monkeypatch):
    monkeypatch.setattr(vllm_lora_ops, "MAX_RUNS", max_runs)
    torch.manual_seed(0)
    a, b = torch.randn(3, 1, 4, 6), torch.randn(3, 1, 10, 4)  # [slots, 1, r, H], [slots, 1, out, r]
    idx = torch.tensor(SLOTS[name])
    x = torch.randn(len(idx), 6)
    shrunk = torch.full((len(idx), 4), 7.0)  # rows of tokens without an adapter must keep this
    bgmv_shrink(x, a, shrunk, idx, 0.5)
    out = torch.ones(len(idx), 12)
    bgmv_expand(shrunk, b, out, idx, add_inputs=True)
    sliced = torch.full((len(idx), 30), 3.0)
    bgmv_expand_slice(shrunk, b, sliced, idx, 10, 10, add_inputs=False)
    for t, want in enumerate(_reference(x, a, b, idx, 0.5)):
        if want is None:
            assert torch.equal(shrunk[t], torch.full((4,), 7.0))
            assert torch.equal(out[t], torch.ones(12)) and torch.equal(sliced[t], torch.full((30,), 3.0))
        else:
            assert torch.allclose(out[t, :10], 1 + want, atol=1e-5) and torch.equal(out[t, 10:], torch.ones(2))
            assert torch.allclose(sliced[t, 10:20], want, atol=1e-5)
            assert torch.equal(sliced[t, :10], torch.full((10,), 3.0))


def test_vllms_own_op_gives_tokens_without_an_adapter_the_last_one():
    """Why the ops are replaced: vLLM's torch op indexes slot -1 as the last slot."""
    a = torch.randn(3, 1, 4, 6)
    x = torch.randn(2, 6)
    idx = torch.tensor([0, -1])
    vllm_way = torch.einsum("bi,boi->bo", x, a.squeeze(1)[idx])
    assert torch.allclose(vllm_way[1], a[2, 0] @ x[1], atol=1e-6)
    ours = torch.zeros(2, 4)
    bgmv_shrink(x, a, ours, idx, 1.0)
    assert torch.equal(ours[1], torch.zeros(4))


def test_a_batch_without_adapters_is_left_alone():
    x, a = torch.randn(3, 6), torch.randn(2, 4, 6)
    out = torch.full((3, 4), 5.0)
    bgmv_shrink(x, a, out, torch.tensor([-1, -1, -1]), 1.0)
    assert torch.equal(out, torch.full((3, 4), 5.0))


def test_selection_takes_the_stacked_way_beyond_max_runs():
    many = torch.tensor([0, 1] * 20)
    few = torch.tensor([0] * 20 + [-1] * 5 + [1] * 15)
    assert vllm_lora_ops._compute_selection(many, 40).runs is None
    assert vllm_lora_ops._compute_selection(few, 40).runs == ((0, 0, 20), (1, 25, 40))
    assert vllm_lora_ops._compute_selection(few, 20).runs == ((0, 0, 20),)  # the first n tokens only
    long_runs = torch.repeat_interleave(torch.tensor([0, 1] * 20), 40)  # 40 runs of 40 tokens
    assert len(vllm_lora_ops._compute_selection(long_runs, 1600).runs) == 40
