"""The merge cache stays bounded: the LRU class itself, over 10,000 random TopKWeighted plans keyed as the planner
keys them, as vLLM's merge folders on disk, and in the transformers executor on the toy world."""

import os
import random
from types import SimpleNamespace

import pytest

from bricks.lora.merge_cache import MergeCache
from index import SearchHit
from orchestrator.plan import BrickConfig, BrickRef
from orchestrator.planner import Planner
from policies import BASE_KEY, Composition, TopKWeighted


def test_lru_evicts_least_recently_used_beyond_count_and_calls_on_evict():
    dropped = []
    cache = MergeCache(max_items=3, on_evict=lambda k, v: dropped.append((k, v)))
    for k in "abc":
        cache.put(k, k.upper(), 10)
    assert cache.get("a") == "A"  # a is now the most recently used
    assert cache.put("d", "D", 10) == ["b"] and dropped == [("b", "B")]
    assert cache.keys() == ["c", "a", "d"] and cache.get("b") is None
    s = cache.stats
    assert (s.hits, s.misses, s.evictions, s.size, s.bytes) == (1, 1, 1, 3, 30)


def test_byte_bound_and_the_entry_just_put_is_kept():
    cache = MergeCache(max_items=10, max_bytes=100)
    cache.put("a", 1, 40)
    cache.put("b", 2, 40)
    assert cache.put("c", 3, 40) == ["a"] and cache.nbytes == 80
    assert cache.put("big", 4, 150) == ["b", "c"]  # the new entry is about to be used: kept, alone
    assert cache.keys() == ["big"] and cache.nbytes == 150
    assert cache.put("e", 5, 10) == ["big"] and cache.nbytes == 10
    cache.put("e", 6, 30)  # replacing an entry counts its new size only
    assert cache.nbytes == 30 and len(cache) == 1 and cache.get("e") == 6


def test_pinned_entries_survive_until_released_then_the_cache_is_trimmed():
    dropped = []
    cache = MergeCache(max_items=2, on_evict=lambda k, v: dropped.append(k))
    with cache.pinned(["a", "b", "c"]):
        for k in "abc":
            cache.put(k, k)
        assert len(cache) == 3 and not dropped  # all three are used by the running call
        with cache.pinned(["a"]):  # nested pins count
            pass
        assert len(cache) == 3
    assert dropped == ["a"] and cache.keys() == ["b", "c"]


def test_failing_release_is_logged_and_the_entry_still_dropped(caplog):
    def boom(key, value):
        raise RuntimeError("disk gone")

    cache = MergeCache(max_items=1, on_evict=boom)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.keys() == ["b"] and "releasing evicted a failed: disk gone" in caplog.text
    with pytest.raises(ValueError, match="at least 1"):
        MergeCache(max_items=0)


def _planner(n_bricks):
    """A planner over a fake library of `n_bricks` LoRA bricks (only `_config` is used: no index, no model)."""
    bricks = [SimpleNamespace(key=f"s{i}@1", id=f"s{i}", version=1, kind="lora",
                              manifest=SimpleNamespace(prompt_template=None)) for i in range(n_bricks)]
    library = SimpleNamespace(list=lambda: bricks)
    return Planner(library, index=None, routing=TopKWeighted(k=3, threshold=0.5, temperature=0.05),
                   composition=Composition("cat"))


def _random_hits(rng, n_bricks):
    keys = rng.sample([f"s{i}@1" for i in range(n_bricks)], 3)
    top = rng.uniform(0.6, 0.95)
    scores = sorted([top] + [top - rng.uniform(0.0, 0.25) for _ in range(2)], reverse=True)
    return [SearchHit(k, s, "x") for k, s in zip(keys, scores)]


def test_cache_stays_bounded_over_10000_random_topk_plans():
    rng = random.Random(0)
    planner = _planner(4)
    raw = TopKWeighted(k=3, threshold=0.5, temperature=0.05, weight_floor=0.0, weight_grid=None)
    cache = MergeCache(max_items=16, max_bytes=16 * 48_000)
    keys, raw_keys, singles, peak = set(), set(), 0, 0
    for _ in range(10_000):
        hits = _random_hits(rng, 4)
        raw_keys.add(planner._config(raw.route(hits))[0].lora_key)
        config = planner._config(planner.routing.route(hits))[0]
        if len(config.loras) == 1:
            assert config.merge == "single" and config.lora_key == config.loras[0].key
            singles += 1
            continue
        assert all(b.weight >= 0.05 and round(b.weight * 100) == pytest.approx(b.weight * 100) for b in config.loras)
        assert sum(b.weight for b in config.loras) == pytest.approx(1.0)
        key = config.lora_key
        keys.add(key)
        if cache.get(key) is None:
            cache.put(key, object(), 16_000 * len(config.loras))  # a rank-16 adapter's bytes per brick, say
        peak = max(peak, len(cache))
        assert len(cache) <= 16 and cache.nbytes <= 16 * 48_000
    s = cache.stats
    assert singles > 0 and peak == 16 and s.evictions == s.misses - len(cache)
    assert s.hits + s.misses == 10_000 - singles and s.hits > 0
    # snapped weights take fewer values: a third as many distinct merges as with the softmax weights as they are
    assert len(keys) * 3 < len(raw_keys)


def test_topk_floor_makes_a_single_brick_step_and_snaps_the_rest():
    planner = _planner(3)
    near_tie = [SearchHit("s0@1", 0.9, "x"), SearchHit("s1@1", 0.45 + 0.44, "y"), SearchHit("s2@1", 0.5, "z")]
    config = planner._config(planner.routing.route(near_tie))[0]
    assert [(b.key, b.weight) for b in config.loras] == [("s0@1", 0.55), ("s1@1", 0.45)]  # s2 at 0.0002: dropped
    assert config.lora_key == "cat(s0@1*0.55,s1@1*0.45)"
    route = planner.routing.route([SearchHit("s0@1", 0.9, "x"), SearchHit("s1@1", 0.45, "y"),
                                   SearchHit(BASE_KEY, 0.4, "b")])
    assert "dropped under weight floor 0.05: s1@1" not in route.reason  # under the threshold: never chosen
    alone = planner.routing.route([SearchHit("s0@1", 0.9, "x"), SearchHit("s1@1", 0.6, "y")])
    assert [b.key for b in alone.bricks] == ["s0@1"] and alone.bricks[0].weight == 1.0
    assert "dropped under weight floor 0.05: s1@1" in alone.reason
    single = planner._config(alone)[0]
    assert single.merge == "single" and single.lora_key == "s0@1"


def _adapter_folders(tmp_path):
    """Two small random adapters (rank 4) of a tiny Llama, as PEFT folders."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from bricks.training.export import save_adapter

    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))
    model = None
    for name in ("x", "y"):
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        model = get_peft_model(base, cfg, adapter_name=name) if model is None else model
        if name != "x":
            model.add_adapter(name, cfg)
        save_adapter(model, tmp_path / name, name)
    return {n: tmp_path / n for n in ("x", "y")}, base.config


def _mix(wx, method="dare_ties"):
    return BrickConfig(bricks=(BrickRef(id="x", version=1, kind="lora", weight=wx),
                               BrickRef(id="y", version=1, kind="lora", weight=round(1 - wx, 2))),
                       merge=method, density=0.5)


def test_vllm_merge_folders_on_disk_are_bounded_and_remerged_identically(tmp_path):
    from orchestrator.executors.vllm.merges import MergeFolders

    sources, model_config = _adapter_folders(tmp_path)
    dropped = []
    cache_dir = tmp_path / "merges"
    folders = MergeFolders(cache_dir, 0, max_items=2, model_config=model_config, on_drop=dropped.append)
    source = lambda ref: sources[ref.id]  # noqa: E731
    first = folders.folder(_mix(0.3), source)
    content = (first / "adapter_model.safetensors").read_bytes()
    with folders.pinned([_mix(0.3), _mix(0.4)]):  # both used by a running call: never evicted during it
        for w in (0.4, 0.5, 0.6):
            folders.folder(_mix(w), source)
        assert dropped == [_mix(0.5).lora_key] and first.is_dir() and len(list(cache_dir.iterdir())) == 3
    assert not first.exists() and dropped == [_mix(0.5).lora_key, _mix(0.3).lora_key]  # trimmed when the call ends
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted([folders.name(_mix(0.4)), folders.name(_mix(0.6))])
    again = folders.folder(_mix(0.3), source)  # evicted, merged again: same folder name, same bytes
    assert again == first and (again / "adapter_model.safetensors").read_bytes() == content
    s = folders.stats
    assert (s.merges, s.misses, s.evictions, s.size) == (5, 5, 3, 2)
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted([folders.name(_mix(0.6)), folders.name(_mix(0.3))])
    os.utime(cache_dir / folders.name(_mix(0.6)), (1, 1))  # the older of the two
    # a new process adopts the folders left on disk, oldest first, and keeps to its own bound
    later = MergeFolders(cache_dir, 0, max_items=1, model_config=model_config)
    assert [p.name for p in cache_dir.iterdir()] == [folders.name(_mix(0.3))]
    assert later.folder(_mix(0.3), source) == again and later.stats.merges == 0 and later.stats.hits == 1


def test_transformers_executor_evicts_deletes_adapters_and_remerges_the_same_outputs():
    from bricks.library import Library
    from bricks.toyworld.paths import world_library_dir, world_model_dir
    from orchestrator.executors.base import GenerationRequest
    from orchestrator.executors.transformers import TransformersExecutor
    from orchestrator.plan import Decoding

    ex = TransformersExecutor(world_model_dir(), Library.open(world_library_dir()), dtype="float32",
                              merge_cache_size=2)
    prompt = "Apply a Caesar shift of one.\nIn: abcdef\nOut: "

    def run(wc, method="linear"):
        config = BrickConfig(bricks=(BrickRef(id="caesar", version=1, kind="lora", weight=wc),
                                     BrickRef(id="double", version=2, kind="lora", weight=round(1 - wc, 2))),
                             merge=method, density=0.5 if method.startswith("dare") else None)
        return ex.generate([GenerationRequest(prompt, config, Decoding(max_new_tokens=8))])[0], config.lora_key

    first, key = run(0.9, "dare_linear")
    name = ex._merges.get(key, count=False)
    assert name in ex.model.peft_config
    others = [run(w)[0] for w in (0.5, 0.2)]  # two more merges: the first is evicted and deleted
    assert name not in ex.model.peft_config and name not in ex._loaded and key not in ex._merges
    merged = [n for n in ex.model.peft_config if n.startswith("m_")]
    assert len(merged) == 2 and ex.merge_stats.evictions == 1 and ex.merge_stats.size == 2
    assert run(0.9, "dare_linear")[0] == first and ex.merge_stats.merges == 4  # merged again, same answer
    assert len([n for n in ex.model.peft_config if n.startswith("m_")]) == 2
    assert len({first, *others}) > 1  # the mixtures differ: equal answers above are not trivial
