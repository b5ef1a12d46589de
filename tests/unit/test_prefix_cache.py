"""The prefix store: exact and longest lookups under a configuration key, copies, a byte budget with least
recently used eviction; and batched generation that reuses stored prefixes gives the texts it gives without."""

import pytest
import torch

from bricks.generation import generate_texts
from bricks.prefix_cache import PrefixCache


def _layers(n: int, fill: float, layers: int = 2):
    return [(torch.full((1, 2, n, 4), fill), torch.full((1, 2, n, 4), -fill)) for _ in range(layers)]


def test_lookups_are_exact_or_longest_and_per_key():
    store = PrefixCache()
    store.put("base", [1, 2, 3, 4], _layers(4, 1.0))
    store.put("base", [1, 2], _layers(2, 2.0))
    store.put("lora@1", [1, 2, 3, 4, 5], _layers(5, 3.0))
    assert store.get("base", [1, 2, 3, 4])[0][0][0, 0, 0, 0] == 1.0
    assert store.get("base", [1, 2, 3]) is None and store.get("other", [1, 2]) is None
    n, layers = store.longest("base", [1, 2, 3, 4, 5, 6], limit=5)
    assert n == 4 and layers[1][1][0, 0, 0, 0] == -1.0
    assert store.longest("base", [1, 2, 3, 4, 5, 6], limit=3)[0] == 2  # a prefix no longer than the limit
    assert store.longest("base", [1, 9, 9], limit=2) is None  # [1, 9] was never stored
    assert store.longest("lora@1", [1, 2, 3, 4], limit=3) is None  # another key's entries never answer
    assert store.stats.hits == 3 and store.stats.hit_tokens == 4 + 4 + 2
    assert sorted(store.entries()) == [("base", 2), ("base", 4), ("lora@1", 5)]


def test_entries_are_copies_and_the_budget_evicts_the_least_recently_used():
    one = _layers(4, 1.0)
    size = sum(t.numel() * t.element_size() for pair in one for t in pair)
    store = PrefixCache(max_bytes=2 * size)
    store.put("k", [1, 2, 3, 4], one)
    one[0][0].fill_(7.0)  # the caller's tensor changes; the entry does not
    assert store.get("k", [1, 2, 3, 4])[0][0].max() == 1.0
    store.put("k", [5, 6, 7, 8], _layers(4, 2.0))
    store.get("k", [1, 2, 3, 4])  # [1..4] is now the most recently used
    store.put("k", [9, 9, 9, 9], _layers(4, 3.0))
    assert store.get("k", [5, 6, 7, 8]) is None and store.get("k", [1, 2, 3, 4]) is not None
    assert store.stats.evictions == 1 and store.stats.bytes == 2 * size and len(store) == 2
    store.put("k", list(range(20)), _layers(20, 1.0))  # larger than the whole budget: not stored
    assert len(store) == 2 and store.longest("k", list(range(30)), 29) is None
    store.clear()
    assert len(store) == 0 and store.stats.bytes == 0 and store.longest("k", [1, 2, 3, 4, 5], 4) is None
    with pytest.raises(ValueError, match="max_bytes -1"):
        PrefixCache(max_bytes=-1)


def _prompts():
    words = ("planet", "moon", "garden", "sky")
    return [f"Reverse the text.\nIn: {w}\nOut: " for w in words] + ["Sort it.\nIn: ab\nOut: "]


@pytest.mark.parametrize("lean", [True, False])
def test_generation_with_the_store_gives_the_same_texts_and_reuses_prefixes(tiny, lean):
    model, tokenizer = tiny
    prompts = _prompts()
    plain = generate_texts(model, tokenizer, prompts, max_new_tokens=8, lean_decode=lean)
    store = PrefixCache()

    def run(batch):
        return generate_texts(model, tokenizer, batch, max_new_tokens=8, share_prefixes=True, lean_decode=lean,
                              row_keys=["base"] * len(batch), prefix_cache=store)

    assert run(prompts) == plain  # the four "Reverse" rows share a prefix: computed, then stored
    assert store.stats.stored == 1 and store.stats.hits == 0
    assert run(prompts) == plain  # taken from the store
    assert store.stats.hits == 1
    assert [run([p])[0] for p in prompts] == plain  # lone prompts: the longest stored prefix, or their own blocks
    assert store.stats.hits >= 1 + 4
    hits = store.stats.hits
    assert [run([p])[0] for p in prompts] == plain  # the "Sort" prompt stored its first block the time before
    assert store.stats.hits == hits + 5


def test_without_row_keys_or_sharing_the_store_is_not_used(tiny):
    model, tokenizer = tiny
    store = PrefixCache()
    generate_texts(model, tokenizer, _prompts(), max_new_tokens=4, share_prefixes=True, prefix_cache=store)
    generate_texts(model, tokenizer, _prompts(), max_new_tokens=4, row_keys=["base"] * 5, prefix_cache=store)
    assert len(store) == 0 and store.stats.lookups == 0  # no key to tell configurations apart / sharing off
