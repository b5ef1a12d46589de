"""Lexical retrieval for the brick index: Okapi BM25 over the indexed texts, and reciprocal rank fusion.

Dense embeddings match meaning but can miss a rare, decisive word ("vowels", "caesar"); BM25 matches words but
not meaning. `reciprocal_rank_fusion` merges the two rankings of keys (Cormack et al. 2009: score = sum over
rankings of 1 / (c + rank)), so a key near the top of either ranking rises. Tokens are lowercased words with a
light suffix folding (plural -s/-es, -ing, -ed, a final -e), so "letters" meets "letter" and "reversed"
"reverse"; no stop list: BM25's IDF gives
words every text has ("the") almost no weight.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["tokenize", "BM25", "reciprocal_rank_fusion", "RRF_C"]

RRF_C = 60  # the constant of reciprocal rank fusion (the usual value: no ranking's top dominates)
_WORD = re.compile(r"[a-z0-9]+")


def _fold(word: str) -> str:
    for suffix, keep in (("ies", "y"), ("sses", "ss"), ("es", ""), ("ing", ""), ("ed", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            word = word[: len(word) - len(suffix)] + keep
            break
    return word[:-1] if len(word) >= 4 and word.endswith("e") else word  # "reverse", "reversed" -> "revers"


def tokenize(text: str) -> list[str]:
    """Lowercased words, suffixes folded: "Sorting the Letters" -> ["sort", "the", "letter"]."""
    return [_fold(w) for w in _WORD.findall(text.lower())]


class BM25:
    """Okapi BM25 over texts with integer ids; `scores` touches only the postings of the query's tokens."""

    def __init__(self, texts: Mapping[int, str], *, k1: float = 1.2, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self._postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self._length: dict[int, int] = {}
        for i, text in texts.items():
            tokens = tokenize(text)
            self._length[i] = len(tokens)
            for tok, tf in Counter(tokens).items():
                self._postings[tok].append((i, tf))
        self._avg = sum(self._length.values()) / len(self._length) if self._length else 0.0

    def __len__(self) -> int:
        return len(self._length)

    def idf(self, token: str) -> float:
        """BM25's IDF (the +1 form: never negative)."""
        n, df = len(self._length), len(self._postings.get(token, ()))
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    def scores(self, query: str) -> dict[int, float]:
        """Text id -> BM25 score of `query`, for texts sharing at least one token with it."""
        out: dict[int, float] = defaultdict(float)
        for tok in set(tokenize(query)):
            postings = self._postings.get(tok)
            if not postings:
                continue
            idf = self.idf(tok)
            for i, tf in postings:
                norm = tf + self.k1 * (1 - self.b + self.b * self._length[i] / (self._avg or 1.0))
                out[i] += idf * tf * (self.k1 + 1) / norm
        return dict(out)


def reciprocal_rank_fusion(rankings: Iterable[Sequence[str]], c: int = RRF_C) -> list[tuple[str, float]]:
    """Keys of several best-first rankings, fused: (key, sum of 1 / (c + rank)) best first (ranks from 1;
    ties keep the order of first appearance)."""
    fused: dict[str, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, start=1):
            fused[key] = fused.get(key, 0.0) + 1.0 / (c + rank)
    order = {key: n for n, key in enumerate(fused)}
    return sorted(fused.items(), key=lambda kv: (-kv[1], order[kv[0]]))
