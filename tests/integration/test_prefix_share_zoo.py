"""Shared-prefix prefill on every family of the zoo: the same greedy texts as computing whole prompts, and no
sharing where a sliding window would count the padding between prefix and rest; prefixes kept across calls
(`bricks.prefix_cache`) give the same texts too, where the family's cache holds plain keys and values."""

import pytest
from zoo_models import ZOO, save_zoo_model

from bricks.generation import generate_texts
from bricks.prefix_cache import PrefixCache, cacheable
from bricks.prefix_share import PrefixStats, attention_window

PROMPTS = [f"Reverse the text.\nIn: {w}\nOut: " for w in ("planet", "moon", "garden", "sky", "window")]


@pytest.fixture(scope="module")
def tokenizer():
    from bricks.model_io import load_tokenizer
    from bricks.toyworld.paths import world_model_dir

    return load_tokenizer(world_model_dir())


def _model(family, folder, tokenizer, **overrides):
    from transformers import AutoModelForCausalLM

    longer = {"n_positions": 256} if family == "gpt2" else {}
    return AutoModelForCausalLM.from_pretrained(save_zoo_model(family, folder, tokenizer, **longer, **overrides)).eval()


@pytest.mark.parametrize("family", list(ZOO))
def test_shared_prefixes_give_the_same_texts_on_every_family(family, tokenizer, tmp_path):
    model = _model(family, tmp_path / family, tokenizer)
    plain = generate_texts(model, tokenizer, PROMPTS, max_new_tokens=6)
    stats = PrefixStats()
    assert generate_texts(model, tokenizer, PROMPTS, max_new_tokens=6, share_prefixes=True,
                          prefix_stats=stats) == plain
    assert stats.batches == 1 and stats.saved_tokens > 0, family


def test_a_sliding_window_smaller_than_the_layout_turns_sharing_off(tokenizer, tmp_path):
    model = _model("mistral", tmp_path / "m", tokenizer, sliding_window=16)
    assert attention_window(model.config) == 16
    stats = PrefixStats()
    plain = generate_texts(model, tokenizer, PROMPTS, max_new_tokens=6)
    assert generate_texts(model, tokenizer, PROMPTS, max_new_tokens=6, share_prefixes=True,
                          prefix_stats=stats) == plain
    assert stats.batches == 0  # prompts of ~30 tokens do not fit a 16-token window with the padding between
    qwen = _model("qwen2", tmp_path / "q", tokenizer, sliding_window=16, use_sliding_window=False)
    assert attention_window(qwen.config) is None


@pytest.mark.parametrize("family", list(ZOO))
def test_prefixes_kept_across_calls_give_the_same_texts_on_every_family(family, tokenizer, tmp_path):
    from transformers import DynamicCache

    model = _model(family, tmp_path / family, tokenizer)
    plain = generate_texts(model, tokenizer, PROMPTS, max_new_tokens=6)
    store = PrefixCache()
    for lean in (True, False):
        def run(prompts):
            return generate_texts(model, tokenizer, prompts, max_new_tokens=6, share_prefixes=True, lean_decode=lean,
                                  row_keys=["base"] * len(prompts), prefix_cache=store)

        assert run(PROMPTS) == plain, (family, lean)  # the shared prefix: stored, or taken from the store
        assert [run([p])[0] for p in PROMPTS] == plain, (family, lean)  # lone prompts reuse it
    if cacheable(DynamicCache(config=model.config)):
        assert store.stats.hits >= 1 + 2 * len(PROMPTS), (family, store.stats)
    else:  # a sliding-window or hybrid cache: the store is never used
        assert store.stats.lookups == 0, family
