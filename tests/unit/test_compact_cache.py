"""Compact FFN matrices built once per mask and kept within a byte budget (bricks.emergent.compact_cache)."""

import pytest
import torch

from bricks.emergent import apply_masks, compact_ffn
from bricks.emergent.compact_cache import CompactCache
from bricks.errors import ConfigError


def _logits(model, tok, text="Sort the letters.\nIn: abc\nOut: "):
    with torch.inference_mode():
        return model(input_ids=torch.tensor([tok(text).input_ids])).logits


def _masks(density, seed):
    g = torch.Generator().manual_seed(seed)
    return {i: torch.rand(64, generator=g) < density for i in (0, 1)}


def _entry_bytes(masks, hidden=32, dtype_bytes=4):
    return sum(3 * int(m.sum()) * hidden * dtype_bytes for m in masks.values())  # gate, up, down of the kept


def test_second_call_with_the_same_mask_reuses_the_matrices_and_outputs_stay_equal_to_masked(tiny):
    model, tok = tiny
    masks = _masks(0.25, seed=1)
    with apply_masks(model, masks):
        masked = _logits(model, tok)
    cache = CompactCache(max_bytes=2**20)
    with compact_ffn(model, masks, cache=cache):
        first = _logits(model, tok)
        gate = model.model.layers[0].mlp.gate_proj
    with compact_ffn(model, masks, cache=cache):
        second = _logits(model, tok)
        assert model.model.layers[0].mlp.gate_proj is gate  # the same module, not a new copy
    with compact_ffn(model, {i: ~m for i, m in masks.items()}, "ablate", cache=cache):  # the same kept neurons
        third = _logits(model, tok)
    assert (cache.stats.builds, cache.stats.hits) == (1, 2)
    assert cache.stats.bytes == _entry_bytes(masks) and len(cache) == 1
    for out in (first, second, third):
        assert torch.allclose(out, masked, atol=1e-5)
    assert model.model.layers[0].mlp.gate_proj.out_features == 64  # the dense modules are back


def test_least_recently_used_entries_go_when_the_bytes_run_out(tiny):
    model, tok = tiny
    a, b, c = _masks(0.25, 1), _masks(0.25, 2), _masks(0.25, 3)
    budget = max(_entry_bytes(m) for m in (a, b, c)) * 2  # two entries fit, three do not
    cache = CompactCache(max_bytes=budget)
    for m in (a, b, a, c):  # a is used again after b: b is the least recently used when c comes
        with compact_ffn(model, m, cache=cache):
            pass
    assert (cache.stats.builds, cache.stats.hits, cache.stats.evictions) == (3, 1, 1)
    assert cache.stats.bytes == _entry_bytes(a) + _entry_bytes(c) <= budget
    with compact_ffn(model, a, cache=cache):
        pass
    assert cache.stats.builds == 3  # a was kept
    with compact_ffn(model, b, cache=cache):
        with_b = _logits(model, tok)
    assert cache.stats.builds == 4  # b was not
    with apply_masks(model, b):
        assert torch.allclose(with_b, _logits(model, tok), atol=1e-5)


def test_an_entry_larger_than_the_budget_is_used_not_kept_and_empty_layers_are_skipped(tiny):
    model, tok = tiny
    masks = {0: torch.zeros(64, dtype=torch.bool), 1: _masks(0.5, 4)[1]}
    cache = CompactCache(max_bytes=16)
    with apply_masks(model, masks):
        masked = _logits(model, tok)
    with compact_ffn(model, masks, cache=cache):
        assert torch.allclose(_logits(model, tok), masked, atol=1e-5)
    assert len(cache) == 0 and cache.stats.bytes == 0 and cache.stats.builds == 1


def test_changed_weights_are_gathered_again(tiny):
    model, tok = tiny
    masks = _masks(0.25, 5)
    cache = CompactCache()
    with compact_ffn(model, masks, cache=cache):
        pass
    up = model.model.layers[1].mlp.up_proj.weight
    saved = up.detach().clone()
    try:
        with torch.no_grad():
            up.mul_(2.0)  # in place: same tensor, new version
        with apply_masks(model, masks):
            masked = _logits(model, tok)
        with compact_ffn(model, masks, cache=cache):
            compact = _logits(model, tok)
    finally:
        with torch.no_grad():
            up.copy_(saved)
    assert cache.stats.stale == 1 and cache.stats.builds == 2 and len(cache) == 1
    assert torch.allclose(compact, masked, atol=1e-5)


@pytest.mark.parametrize("bad", [0, -1, 1.5, None])
def test_bad_budget_is_named(bad):
    with pytest.raises(ConfigError, match=f"compact cache max_bytes must be a positive int, got {bad!r}"):
        CompactCache(max_bytes=bad)
