"""The vLLM executor's merge cache on the engine: evicted merged adapters are deleted from disk and from the
engine, merged again on their next use with the same answers, and a call with more merges than the cache holds
still runs (the adapters it uses are pinned)."""

import pytest

from bricks.prompt import DEFAULT_TEMPLATE
from orchestrator.executors.base import GenerationRequest
from orchestrator.plan import BrickConfig, BrickRef, Decoding

D = Decoding(max_new_tokens=12)


def _mix(wc, method="linear"):
    return BrickConfig(bricks=(BrickRef(id="caesar", version=1, kind="lora", weight=wc),
                               BrickRef(id="double", version=2, kind="lora", weight=round(1 - wc, 2))),
                       merge=method, density=0.5 if method.startswith("dare") else None)


def _req(config, x="planet"):
    return GenerationRequest(DEFAULT_TEMPLATE.render("Apply a Caesar shift of one.", x), config, D)


@pytest.fixture
def small_cache(vllm_executor):
    """The session's engine with a merge cache of one adapter, restored afterwards."""
    cache = vllm_executor._merges._cache
    old = cache.max_items
    cache.max_items = 1
    yield vllm_executor
    cache.max_items = old
    cache.trim()


def test_evicted_merge_is_deleted_and_remerged_with_the_same_answers(small_cache, transformers_executor):
    ex = small_cache
    first = ex.generate([_req(_mix(0.8, "dare_ties"))])
    folder = ex.cache_dir / ex._merges.name(_mix(0.8, "dare_ties"))
    assert folder.is_dir() and _mix(0.8, "dare_ties").lora_key in ex._lora_requests
    evictions = ex.merge_stats.evictions
    other = ex.generate([_req(_mix(0.3))])
    assert not folder.exists() and _mix(0.8, "dare_ties").lora_key not in ex._lora_requests
    assert ex.merge_stats.evictions == evictions + 1 and len(ex._merges) == 1
    assert ex.generate([_req(_mix(0.8, "dare_ties"))]) == first and folder.is_dir()  # merged again: same answer
    assert first == transformers_executor.generate([_req(_mix(0.8, "dare_ties"))])  # DARE seeded alike
    assert other == transformers_executor.generate([_req(_mix(0.3))])


def test_a_call_with_more_merges_than_the_cache_holds_runs_them_all(small_cache, transformers_executor):
    ex = small_cache
    reqs = [_req(_mix(w), x) for w in (0.2, 0.5, 0.7) for x in ("moon", "brick")]
    assert ex.generate(reqs) == transformers_executor.generate(reqs)
    assert len(ex._merges) == 1 and len(list(ex.cache_dir.iterdir())) == 1  # trimmed once the call ended
