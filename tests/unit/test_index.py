"""The FAISS brick index: search, incremental changes, persistence, staleness."""

import numpy as np
import pytest

from index import BrickDocument, BrickIndex, HashingEmbedder, IndexLoadError, StaleIndexError, load, open_or_build, save

DOCS = [BrickDocument("reverse@1", ("Reverse the text.", "Write the input backwards.")),
        BrickDocument("add@1", ("Add the two numbers.", "What is the sum?")),
        BrickDocument("vowels@1", ("Remove the vowels.", "Delete every vowel."))]


def test_search_returns_distinct_keys_sorted():
    idx = BrickIndex.build(DOCS, HashingEmbedder(), source_fingerprint="f")
    hits = idx.search("Add the two numbers please", k=3)
    assert hits[0].key == "add@1" and hits[0].text == "Add the two numbers."
    assert len({h.key for h in hits}) == len(hits) == 3
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_add_and_remove_do_not_reembed_others():
    emb = HashingEmbedder()
    idx = BrickIndex.build(DOCS, emb, source_fingerprint="f")
    calls = emb.calls
    idx.add(BrickDocument("double@1", ("Double every letter.",)))
    assert emb.calls == calls + 1
    assert idx.search("Double every letter.", 1)[0].key == "double@1"
    idx.remove("double@1")
    assert "double@1" not in idx.keys() and len(idx) == 6
    with pytest.raises(KeyError, match="no key 'double@1'"):
        idx.remove("double@1")


def test_persistence_round_trip_and_staleness(tmp_path):
    emb = HashingEmbedder()
    idx = BrickIndex.build(DOCS, emb, source_fingerprint="f1")
    save(idx, tmp_path)
    again = load(tmp_path, emb, expected_fingerprint="f1")
    assert again.search("What is the sum?", 2) == idx.search("What is the sum?", 2)
    with pytest.raises(StaleIndexError, match="f1"):
        load(tmp_path, emb, expected_fingerprint="f2")
    with pytest.raises(StaleIndexError, match="hashing-32"):
        load(tmp_path, HashingEmbedder(32), expected_fingerprint="f1")
    rebuilt, was_rebuilt = open_or_build(tmp_path, lambda: DOCS[:1], emb, "f2")
    assert was_rebuilt and rebuilt.keys() == ["reverse@1"]
    _, was_rebuilt = open_or_build(tmp_path, lambda: DOCS, emb, "f2")
    assert not was_rebuilt


def test_corrupt_metadata_is_reported_and_rebuilt(tmp_path):
    emb = HashingEmbedder()
    save(BrickIndex.build(DOCS, emb, source_fingerprint="f"), tmp_path)
    (tmp_path / "index.json").write_text("{broken")
    with pytest.raises(IndexLoadError, match="corrupt index metadata"):
        load(tmp_path, emb, expected_fingerprint="f")
    idx, rebuilt = open_or_build(tmp_path, lambda: DOCS, emb, "f")
    assert rebuilt and len(idx) == 6


def test_ivf_agrees_with_flat_on_most_queries():
    rng = np.random.default_rng(0)
    n, dim = 3000, 32

    class Fixed:
        name, dim = "fixed", 32

    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    keys = [f"b{i // 3}@1" for i in range(n)]
    texts = [f"t{i}" for i in range(n)]
    flat = BrickIndex.from_vectors(keys, texts, vecs, Fixed(), source_fingerprint="f")
    ivf = BrickIndex.from_vectors(keys, texts, vecs, Fixed(), source_fingerprint="f", ivf_threshold=1000)
    queries = vecs[:200] + 0.05 * rng.normal(size=(200, dim)).astype(np.float32)
    a = [h[0].key for h in flat.search_vectors(queries, 1)]
    b = [h[0].key for h in ivf.search_vectors(queries, 1)]
    assert np.mean([x == y for x, y in zip(a, b)]) >= 0.9
    ivf.remove("b0@1")
    assert "b0@1" not in {h.key for h in ivf.search_vectors(vecs[:1], 5)[0]}


def test_real_embedder_loads_offline_and_ranks_by_meaning():
    from index import SentenceTransformerEmbedder

    emb = SentenceTransformerEmbedder()
    v = emb.embed(["Reverse the text.", "Write the input backwards.", "Add the two numbers."])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
    assert v[0] @ v[1] > v[0] @ v[2]
    assert np.array_equal(emb.embed(["Reverse the text."])[0], v[0])  # cached
