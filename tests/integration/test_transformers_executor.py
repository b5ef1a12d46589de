"""The transformers executor on the shipped toy world: adapters loaded once, switched per group, merged on demand.

(The CI-sized quick world answers every prompt with an empty string, which made "equal outputs" trivially true.)"""

import pytest

from orchestrator.executors.base import GenerationRequest, UnsupportedConfigError
from orchestrator.plan import BrickConfig, BrickRef, Decoding


@pytest.fixture(scope="module")
def executor():
    from bricks.library import Library
    from bricks.toyworld.paths import world_library_dir, world_model_dir
    from orchestrator.executors.transformers import TransformersExecutor

    return TransformersExecutor(world_model_dir(), Library.open(world_library_dir()))


def _ref(executor, brick_id, weight=1.0):
    b = executor.library.get(brick_id)
    return BrickRef(id=b.id, version=b.version, kind="lora", weight=weight)


def test_mixed_batch_equals_separate_runs(executor):
    caesar = BrickConfig(bricks=(_ref(executor, "caesar"),))
    double = BrickConfig(bricks=(_ref(executor, "double"),))
    d = Decoding(max_new_tokens=6)
    reqs = [GenerationRequest("Reverse the text.\nIn: abc\nOut: ", BrickConfig(), d),
            GenerationRequest("Apply a Caesar shift of one.\nIn: abc\nOut: ", caesar, d),
            GenerationRequest("Double every letter.\nIn: abc\nOut: ", double, d),
            GenerationRequest("Reverse the text.\nIn: xyz\nOut: ", BrickConfig(), d)]
    mixed = executor.generate(reqs)
    alone = [executor.generate([r])[0] for r in reqs]
    assert mixed == alone
    assert alone[1] != alone[2]  # the adapters really differ, so "equal" above is not trivially true


def test_base_requests_after_adapters_match_a_model_that_never_loaded_one(executor):
    from orchestrator.executors.transformers import TransformersExecutor

    d = Decoding(max_new_tokens=6)
    caesar = BrickConfig(bricks=(_ref(executor, "caesar"),))
    base = GenerationRequest("Reverse the text.\nIn: planet\nOut: ", BrickConfig(), d)
    executor.generate([GenerationRequest("Apply a Caesar shift of one.\nIn: abc\nOut: ", caesar, d)])
    assert executor._loaded  # an adapter is loaded in this model now
    untouched = TransformersExecutor(executor.model_dir, executor.library)
    assert executor.generate([base]) == untouched.generate([base])


def test_adapters_are_loaded_once(executor):
    cfg = BrickConfig(bricks=(_ref(executor, "devowel"),))
    executor.generate([GenerationRequest("Remove the vowels.\nIn: abc\nOut: ", cfg, Decoding(max_new_tokens=3))])
    loaded = set(executor._loaded)
    executor.generate([GenerationRequest("Remove the vowels.\nIn: xyz\nOut: ", cfg, Decoding(max_new_tokens=3))])
    assert executor._loaded == loaded and any("devowel" in n for n in loaded)


def test_weighted_mixture_is_built_once_and_differs_from_parts(executor):
    mix = BrickConfig(bricks=(_ref(executor, "caesar", 0.5), _ref(executor, "double", 0.5)), merge="cat")
    prompt = "Apply a Caesar shift of one.\nIn: abcdef\nOut: "
    out1 = executor.generate([GenerationRequest(prompt, mix, Decoding(max_new_tokens=8))])
    n_loaded = len(executor._loaded)
    out2 = executor.generate([GenerationRequest(prompt, mix, Decoding(max_new_tokens=8))])
    assert out1 == out2 and len(executor._loaded) == n_loaded
    parts = [executor.generate([GenerationRequest(prompt, BrickConfig(bricks=(_ref(executor, b),)),
                                                  Decoding(max_new_tokens=8))]) for b in ("caesar", "double")]
    assert out1 not in parts  # the mixture is its own adapter, not one of its parts


def test_unsupported_features_reported_together(executor):
    mask = BrickRef(id="m1", version=1, kind="ffn_mask")
    mask2 = BrickRef(id="m2", version=1, kind="ffn_mask")
    with pytest.raises(UnsupportedConfigError, match="m1@1.*m2@1"):
        executor.generate([GenerationRequest("x", BrickConfig(bricks=(mask,))),
                           GenerationRequest("y", BrickConfig(bricks=(mask2,)))])


@pytest.mark.parametrize("merge,density", [("linear", None), ("svd", None), ("ties", 0.5), ("dare_linear", 0.5),
                                           ("dare_ties", 0.5)])
def test_every_merge_method_is_cached_and_deterministic(executor, merge, density):
    from orchestrator.executors.transformers import TransformersExecutor

    mix = BrickConfig(bricks=(_ref(executor, "caesar", 0.6), _ref(executor, "double", 0.4)), merge=merge,
                      density=density)
    req = GenerationRequest("Apply a Caesar shift of one.\nIn: abcdef\nOut: ", mix, Decoding(max_new_tokens=8))
    merges, hits = executor.merge_stats.merges, executor.merge_stats.hits
    first = executor.generate([req])
    assert executor.merge_stats.merges == merges + 1
    assert executor.generate([req]) == first and executor.merge_stats.hits == hits + 1
    fresh = TransformersExecutor(executor.model_dir, executor.library)  # DARE is seeded: same merge elsewhere
    assert fresh.generate([req]) == first
