"""Spelling repair of queries before they are embedded: misspelt words become the nearest indexed word.

A sentence embedder maps "Revrese the txet." far from "Reverse the text.": typos split words into unrelated
word pieces. `SpellingRepair` rewrites each word that is neither an English word (pyspellchecker's frequency
list, loaded on first use) nor a word of the indexed texts to the indexed word nearest to it by Damerau-Levenshtein
distance (adjacent swaps count once): at most 1 edit for words of up to 4 letters, 2 beyond, ties to the word
the index uses most. A word with no indexed word that near is left as it is. English words are never changed,
so rare but real words ("collate", "tally") keep their meaning. Without pyspellchecker installed every word
outside the index vocabulary is a candidate for repair.
"""

from __future__ import annotations

import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable

__all__ = ["SpellingRepair", "edit_distance", "english_words"]

_WORD = re.compile(r"[A-Za-z]+")
_MIN_LEN = 3  # shorter words ("ad", "of") are too ambiguous to repair


def edit_distance(a: str, b: str, limit: int) -> int:
    """Optimal string alignment distance of `a` and `b` (insert, delete, substitute, swap adjacent), or
    `limit + 1` as soon as it must exceed `limit`."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return prev[-1]


_ENGLISH: Callable[[str], bool] | None = None
_ENGLISH_LOCK = threading.Lock()


def english_words() -> Callable[[str], bool] | None:
    """Membership in pyspellchecker's English word list (lowercase words), or None without the package."""
    global _ENGLISH
    with _ENGLISH_LOCK:
        if _ENGLISH is None:
            try:
                from spellchecker import SpellChecker
            except ImportError:
                return None
            frequency = SpellChecker(language="en", distance=1).word_frequency
            _ENGLISH = frequency.__contains__
        return _ENGLISH


class SpellingRepair:
    """Repairs queries against the vocabulary of the indexed texts (see the module docstring)."""

    def __init__(self, texts: Iterable[str], *, known: Callable[[str], bool] | None = None,
                 use_english: bool = True, cache_size: int = 8192) -> None:
        counts = Counter(w.lower() for t in texts for w in _WORD.findall(t))
        self._vocabulary = counts
        self._by_length: dict[int, list[str]] = {}
        for word in sorted(counts):
            if len(word) >= _MIN_LEN:
                self._by_length.setdefault(len(word), []).append(word)
        self._known = known if known is not None else (english_words() if use_english else None)
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def repair_word(self, word: str) -> str:
        """The indexed word `word` (lowercase) was most likely meant to be, or `word` itself."""
        if len(word) < _MIN_LEN or word in self._vocabulary or (self._known is not None and self._known(word)):
            return word
        with self._lock:
            hit = self._cache.get(word)
            if hit is not None:
                self._cache.move_to_end(word)
                return hit
        limit = 1 if len(word) <= 4 else 2
        best, rank = word, (limit + 1, 0)
        for length in range(len(word) - limit, len(word) + limit + 1):
            for candidate in self._by_length.get(length, ()):
                d = edit_distance(word, candidate, limit)
                if d <= limit and (d, -self._vocabulary[candidate]) < rank:
                    best, rank = candidate, (d, -self._vocabulary[candidate])
        with self._lock:
            self._cache[word] = best
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return best

    def repair(self, text: str) -> str:
        """`text` with each misspelt word replaced (its first letter's case kept); other characters unchanged."""
        def fix(match: re.Match) -> str:
            word = match.group(0)
            repaired = self.repair_word(word.lower())
            if repaired == word.lower():
                return word
            return repaired.capitalize() if word[0].isupper() else repaired

        return _WORD.sub(fix, text)
