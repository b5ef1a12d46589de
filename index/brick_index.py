"""The brick index: each brick's description and example instructions as vectors in FAISS, searched by meaning.

Small indexes are exact (`IndexIDMap2` over `IndexFlatIP`); past `ivf_threshold` vectors an `IndexIVFFlat`
keeps a search near a millisecond at 100 000 bricks. Both take incremental adds and removes by id.

`search_many(..., hybrid=True)` ranks keys by reciprocal rank fusion of the dense ranking and a BM25 ranking of
the same texts (`index.lexical`); each hit keeps its dense cosine score and text, so routing thresholds mean
what they mean in a dense search.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass

__all__ = ["BrickDocument", "SearchHit", "BrickIndex"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrickDocument:
    """What is indexed for one key: a brick (`id@version`) or a reserved route such as `base`."""

    key: str
    texts: tuple[str, ...]


@dataclass(frozen=True)
class SearchHit:
    """One key found for a query: its best cosine similarity and the indexed text that gave it."""

    key: str
    score: float
    text: str


class BrickIndex:
    """Vectors of documents' texts, searched by inner product of unit vectors (cosine similarity)."""

    def __init__(self, embedder, faiss_index, entries: dict[int, tuple[str, str]], *, source_fingerprint: str,
                 next_id: int | None = None, nprobe: int = 16) -> None:
        self.embedder = embedder
        self._index = faiss_index
        self._entries = dict(entries)
        self._by_key: dict[str, list[int]] = defaultdict(list)
        for i, (key, _) in self._entries.items():
            self._by_key[key].append(i)
        self.source_fingerprint = source_fingerprint
        self._next_id = next_id if next_id is not None else max(self._entries, default=-1) + 1
        self.nprobe = nprobe
        if hasattr(self._index, "nprobe"):
            self._index.nprobe = nprobe
        self._bm25 = None  # built on the first hybrid search, dropped on every change

    # -- building ----------------------------------------------------------------------------------------
    @classmethod
    def build(cls, documents: Sequence[BrickDocument], embedder, *, source_fingerprint: str,
              ivf_threshold: int = 50_000) -> "BrickIndex":
        keys = [d.key for d in documents for _ in d.texts]
        texts = [t for d in documents for t in d.texts]
        vectors = embedder.embed(texts) if texts else None
        return cls.from_vectors(keys, texts, vectors, embedder, source_fingerprint=source_fingerprint,
                                ivf_threshold=ivf_threshold)

    @classmethod
    def from_vectors(cls, keys: Sequence[str], texts: Sequence[str], vectors, embedder, *, source_fingerprint: str,
                     ivf_threshold: int = 50_000) -> "BrickIndex":
        """An index of precomputed unit vectors [n, dim] (e.g. embedded elsewhere, or synthetic)."""
        import faiss
        import numpy as np

        n, dim = len(keys), embedder.dim
        if n >= ivf_threshold:
            nlist = int(4 * np.sqrt(n))
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = np.random.default_rng(0).choice(n, size=min(n, 64 * nlist), replace=False)
            index.train(np.ascontiguousarray(vectors[np.sort(sample)], dtype=np.float32))  # 64 points per list
            index.own_fields = True
            quantizer.this.disown()
        else:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if n:
            index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.arange(n, dtype=np.int64))
        return cls(embedder, index, {i: (k, t) for i, (k, t) in enumerate(zip(keys, texts))},
                   source_fingerprint=source_fingerprint, next_id=n)

    # -- reading -----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._index.ntotal)

    def keys(self) -> list[str]:
        return sorted(self._by_key)

    @property
    def faiss_index(self):
        return self._index

    @property
    def entries(self) -> dict[int, tuple[str, str]]:
        return dict(self._entries)

    @property
    def next_id(self) -> int:
        return self._next_id

    def search(self, query: str, k: int = 5) -> list[SearchHit]:
        return self.search_many([query], k)[0]

    def search_vectors(self, vectors, k: int = 5) -> list[list[SearchHit]]:
        """Top-k distinct keys per query vector, best first (the max similarity over each key's texts)."""
        import numpy as np

        total = len(self)
        if total == 0:
            return [[] for _ in range(len(vectors))]
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        fetch = min(total, max(4 * k, 16))
        while True:
            scores, ids = self._index.search(vectors, fetch)
            results = [self._distinct(s, i, k) for s, i in zip(scores, ids)]
            if fetch >= total or all(len(r) >= min(k, len(self._by_key)) for r in results):
                return results
            fetch = min(total, fetch * 4)

    def search_many(self, queries: Sequence[str], k: int = 5, *, hybrid: bool = False,
                    exclude: Collection[str] = ()) -> list[list[SearchHit]]:
        """Top-k distinct keys per query, best first: by cosine similarity, or with `hybrid` by reciprocal rank
        fusion of the dense and the BM25 rankings (keys in `exclude` take no rank in either)."""
        if not queries:
            return []
        vectors = self.embedder.embed(list(queries))
        if not hybrid:
            hits = self.search_vectors(vectors, k + len(exclude))
            return [[h for h in found if h.key not in exclude][:k] for found in hits]
        return self._hybrid(list(queries), vectors, k, frozenset(exclude))

    def _hybrid(self, queries: list[str], vectors, k: int, exclude: frozenset[str]) -> list[list[SearchHit]]:
        from index.lexical import BM25, reciprocal_rank_fusion

        if self._bm25 is None:
            self._bm25 = BM25({i: text for i, (_, text) in self._entries.items()})
        depth = min(len(self._by_key), max(4 * k, 16))
        dense = self.search_vectors(vectors, depth + len(exclude))
        out = []
        for query, vector, found in zip(queries, vectors, dense):
            found = [h for h in found if h.key not in exclude][:depth]
            lexical: dict[str, tuple[float, int]] = {}
            for i, score in self._bm25.scores(query).items():
                key = self._entries[i][0]
                if key not in exclude and score > lexical.get(key, (0.0, -1))[0]:
                    lexical[key] = (score, i)
            lex_rank = sorted(lexical, key=lambda key: -lexical[key][0])[:depth]
            by_key = {h.key: h for h in found}
            fused = reciprocal_rank_fusion([[h.key for h in found], lex_rank])[:k]
            out.append([by_key.get(key) or self._dense_hit(key, vector, lexical[key][1]) for key, _ in fused])
        return out

    def _dense_hit(self, key: str, vector, fallback_id: int) -> SearchHit:
        """The dense hit of a key the dense ranking did not reach: its best cosine over its texts (0 and the
        lexically best text when the FAISS index cannot give vectors back)."""
        import numpy as np

        try:
            scored = [(float(np.dot(self._index.reconstruct(int(i)), vector)), i) for i in self._by_key[key]]
        except RuntimeError:  # an IVF index without a direct map
            return SearchHit(key, 0.0, self._entries[fallback_id][1])
        score, i = max(scored)
        return SearchHit(key, score, self._entries[i][1])

    def _distinct(self, scores, ids, k: int) -> list[SearchHit]:
        best: dict[str, SearchHit] = {}
        for score, i in zip(scores, ids):
            if i < 0:
                continue
            key, text = self._entries[int(i)]
            if key not in best:
                best[key] = SearchHit(key, float(score), text)
                if len(best) == k:
                    break
        return sorted(best.values(), key=lambda h: -h.score)

    # -- changing ----------------------------------------------------------------------------------------
    def add(self, document: BrickDocument) -> None:
        """Index a new document (replacing one with the same key); other documents are not re-embedded."""
        import numpy as np

        if document.key in self._by_key:
            self.remove(document.key)
        if not document.texts:
            return
        vectors = self.embedder.embed(list(document.texts))
        ids = np.arange(self._next_id, self._next_id + len(document.texts), dtype=np.int64)
        self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
        self._bm25 = None
        for i, text in zip(ids.tolist(), document.texts):
            self._entries[i] = (document.key, text)
            self._by_key[document.key].append(i)
        self._next_id += len(document.texts)

    def remove(self, key: str) -> None:
        import numpy as np

        ids = self._by_key.pop(key, None)
        if not ids:
            raise KeyError(f"no key {key!r} in the brick index")
        self._index.remove_ids(np.array(ids, dtype=np.int64))
        self._bm25 = None
        for i in ids:
            del self._entries[i]


    def copy(self) -> "BrickIndex":
        """An independent copy (change it, then swap it in, while readers keep searching this one)."""
        import faiss

        return BrickIndex(self.embedder, faiss.clone_index(self._index), self._entries,
                          source_fingerprint=self.source_fingerprint, next_id=self._next_id, nprobe=self.nprobe)

    def documents(self) -> dict[str, tuple[str, ...]]:
        """Key -> the texts indexed for it, in the order they were added."""
        return {key: tuple(self._entries[i][1] for i in sorted(ids)) for key, ids in self._by_key.items()}

    def sync(self, documents: Sequence[BrickDocument], *, source_fingerprint: str) -> tuple[list[str], list[str]]:
        """Make the index hold exactly `documents`: only keys that are new, gone or changed are (re-)embedded.

        Returns (added or changed keys, removed keys); `source_fingerprint` is recorded as the new state.
        """
        wanted = {d.key: tuple(d.texts) for d in documents}
        have = self.documents()
        removed = sorted(k for k in have if k not in wanted)
        added = sorted(k for k, texts in wanted.items() if have.get(k) != texts)
        for key in removed:
            self.remove(key)
        for key in added:
            self.add(BrickDocument(key, wanted[key]))
        self.source_fingerprint = source_fingerprint
        return added, removed
