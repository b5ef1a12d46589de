"""The fast decode path (static KV cache, compiled step) gives the eager path's greedy outputs on the toy world."""

import pytest
import torch

from bricks.emergent import apply_masks, compact_ffn
from bricks.emergent.compact_cache import CompactCache
from bricks.errors import ConfigError
from bricks.fast_decode import FastDecode, decode_kwargs, hooked_modules
from bricks.generation import generate_texts

PROMPTS = ["Sort the letters.\nIn: dcba\nOut: ", "Reverse the word.\nIn: hello\nOut: ",
           "Count the vowels.\nIn: banana\nOut: ", "Uppercase the word.\nIn: abc\nOut: ",
           "Reverse the word.\nIn: brickwork\nOut: "]


@pytest.fixture(scope="module")
def world():
    from bricks.model_io import load_model, load_tokenizer
    from bricks.toyworld.paths import world_model_dir

    return load_model(world_model_dir(), dtype="float32", device="cpu"), load_tokenizer(world_model_dir())


def _masks(model, share=0.25, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = model.config.intermediate_size
    return {i: torch.rand(size, generator=g) < share for i in range(model.config.num_hidden_layers)}


def test_static_cache_gives_the_eager_greedy_outputs(world):
    model, tok = world
    eager = generate_texts(model, tok, PROMPTS, max_new_tokens=8, batch_size=3)  # batches of 3 and 2, padded
    fast = FastDecode(enabled=True, compile=False)
    assert decode_kwargs(model, fast) == {"cache_implementation": "static", "disable_compile": True}
    assert generate_texts(model, tok, PROMPTS, max_new_tokens=8, batch_size=3, fast_decode=fast) == eager
    assert any(eager) and len(set(eager)) > 2  # the model answers, and differently per prompt


def test_auto_is_off_on_a_cpu(world):
    model, _ = world
    assert decode_kwargs(model, FastDecode()) == {} and decode_kwargs(model) == {}


@pytest.mark.slow
def test_compiled_step_follows_compact_masks_and_is_not_used_under_hooks(world):
    """torch.compile's dynamo (the "eager" backend: no code generation, seconds on a CPU) on the decode step."""
    model, tok = world
    fast = FastDecode(enabled=True, compile=True, backend="eager", mode=None)
    assert "compile_config" in decode_kwargs(model, fast)
    run = dict(max_new_tokens=10, batch_size=len(PROMPTS))
    eager = generate_texts(model, tok, PROMPTS, **run)
    assert generate_texts(model, tok, PROMPTS, fast_decode=fast, **run) == eager
    assert hasattr(model, "_compiled_call")  # transformers compiled the step
    masks, cache = _masks(model), CompactCache()
    with compact_ffn(model, masks, cache=cache):
        compact_eager = generate_texts(model, tok, PROMPTS, **run)
    for _ in range(2):  # swapped modules are guarded: the step recompiles for the compact shapes, then reuses
        with compact_ffn(model, masks, cache=cache):
            assert generate_texts(model, tok, PROMPTS, fast_decode=fast, **run) == compact_eager
    assert compact_eager != eager and cache.stats.builds == 1
    with apply_masks(model, masks):  # hooks: a compiled step would run without them (dynamo does not guard hooks)
        assert generate_texts(model, tok, PROMPTS, fast_decode=fast, **run) == compact_eager  # masked == compact
        assert hooked_modules(model) and "compile_config" not in decode_kwargs(model, fast)
    assert generate_texts(model, tok, PROMPTS, fast_decode=fast, **run) == eager  # dense again


@pytest.mark.parametrize(("field", "value", "message"), [
    ("enabled", "yes", "FastDecode.enabled must be 'auto', True or False, got 'yes'"),
    ("compile", 1.0, "FastDecode.compile must be 'auto', True or False, got 1.0"),
    ("mode", "fast", "FastDecode.mode 'fast' is not a torch.compile mode"),
    ("recompile_limit", 0, "FastDecode.recompile_limit must be a positive int, got 0"),
])
def test_bad_settings_are_named(field, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FastDecode(**{field: value})
