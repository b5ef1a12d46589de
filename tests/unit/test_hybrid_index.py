"""Hybrid retrieval: BM25 over the indexed texts, reciprocal rank fusion, and the brick index's hybrid search."""

import pytest

from index import BrickDocument, BrickIndex, HashingEmbedder
from index.lexical import BM25, reciprocal_rank_fusion, tokenize


def test_tokenize_folds_plurals_and_inflections():
    assert tokenize("Reversed the Letters, doubles; double reverse SORTING class") == [
        "revers", "the", "letter", "doubl", "doubl", "revers", "sort", "class"]


def test_bm25_prefers_the_rare_matching_word_and_ignores_unknown_ones():
    bm = BM25({0: "Remove the vowels.", 1: "Sort the letters.", 2: "Reverse the text."})
    scores = bm.scores("strip vowels from the word")
    assert max(scores, key=scores.get) == 0 and set(scores) == {0, 1, 2}  # "the" matches all, weakly
    assert scores[0] > 5 * scores[1] and scores[1] == scores[2] > 0
    assert bm.scores("zebra") == {} and bm.idf("the") > 0 and len(bm) == 3


def test_reciprocal_rank_fusion_sums_inverse_ranks():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "a"]], c=60)
    assert [k for k, _ in fused] == ["a", "c", "b"]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62) and fused[2][1] == pytest.approx(1 / 62)
    assert [k for k, _ in reciprocal_rank_fusion([["x", "y"], ["y", "x"]])] == ["x", "y"]  # ties: first seen


@pytest.fixture
def index():
    docs = [BrickDocument("devowel@1", ("Removes the vowels from a word.", "Remove the vowels.")),
            BrickDocument("caesar@1", ("Shifts every letter one place forward.", "Apply a Caesar shift of one.")),
            BrickDocument("base", ("Reverse the text.", "Sort the letters.", "Count the letters."))]
    return BrickIndex.build(docs, HashingEmbedder(64), source_fingerprint="x")


def test_hybrid_hits_keep_their_dense_scores(index):
    query = "Get rid of the vowels please."
    dense = {h.key: h for h in index.search_many([query], 3)[0]}
    hybrid = index.search_many([query], 3, hybrid=True)[0]
    assert {h.key for h in hybrid} == set(dense) and hybrid[0].key == "devowel@1"
    for hit in hybrid:
        assert hit.score == pytest.approx(dense[hit.key].score) and hit.text == dense[hit.key].text


def test_hybrid_excludes_keys_and_reaches_keys_beyond_the_dense_depth(index):
    hits = index.search_many(["Remove the vowels."], 3, hybrid=True, exclude={"devowel@1"})[0]
    assert "devowel@1" not in {h.key for h in hits} and len(hits) == 2
    assert [h.key for h in index.search_many(["Remove the vowels."], 3, exclude={"devowel@1"})[0]] == [
        h.key for h in index.search_many(["Remove the vowels."], 3)[0] if h.key != "devowel@1"]
    # a key found only lexically gets its best cosine over its own texts
    hit = index._dense_hit("caesar@1", index.embedder.embed(["Caesar"])[0], 0)
    full = {h.key: h for h in index.search_many(["Caesar"], 3)[0]}
    assert hit.score == pytest.approx(full["caesar@1"].score) and hit.text == full["caesar@1"].text


def test_lexical_side_follows_adds_and_removes(index):
    assert all(h.key != "zebra@1" for h in index.search_many(["zebra stripes"], 3, hybrid=True)[0])
    index.add(BrickDocument("zebra@1", ("Paint zebra stripes on it.",)))
    assert index.search_many(["zebra stripes"], 3, hybrid=True)[0][0].key == "zebra@1"
    index.remove("zebra@1")
    assert all(h.key != "zebra@1" for h in index.search_many(["zebra stripes"], 3, hybrid=True)[0])


def test_retrieval_option_is_checked():
    from bricks.errors import BrickworkError
    from policies import TopKWeighted, TopOne

    assert TopOne().retrieval == "dense" and TopOne(retrieval="hybrid").retrieval == "hybrid"
    for policy in (TopOne, TopKWeighted):
        with pytest.raises(BrickworkError, match="unknown retrieval 'sparse'; expected 'dense' or 'hybrid'"):
            policy(retrieval="sparse")


def test_hard_paraphrase_split_is_unseen_and_right():
    from bricks.toyworld.paraphrases import (
        HARD_CATEGORIES,
        HARD_PARAPHRASES,
        PARAPHRASES,
        calibration_rows,
        hard_paraphrase_rows,
    )
    from bricks.toyworld.skills import SKILLS
    from bricks.toyworld.tasks import split_of

    rows = hard_paraphrase_rows()
    assert len(rows) == 9 * 4 * 3 * 3 and len({r.id for r in rows}) == len(rows)
    assert set(HARD_PARAPHRASES) == set(SKILLS) and all(set(v) == set(HARD_CATEGORIES)
                                                         for v in HARD_PARAPHRASES.values())
    known = {p for s in SKILLS.values() for p in s.phrasings} | {p for v in PARAPHRASES.values() for p in v}
    known |= {r["instruction"] for part in ("fit", "check") for r in calibration_rows(part)}
    assert not {r.instruction for r in rows} & known
    for r in rows:
        assert split_of(r.input) == "test" and SKILLS[r.skills[0]].apply(r.input) == r.output
