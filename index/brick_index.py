"""The brick index: each brick's description and example instructions as vectors in FAISS, searched by meaning.

Small indexes are exact (`IndexIDMap2` over `IndexFlatIP`); past `ivf_threshold` vectors an `IndexIVFFlat`
keeps a search near a millisecond at 100 000 bricks. Both take incremental adds and removes by id.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
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

    def search_many(self, queries: Sequence[str], k: int = 5) -> list[list[SearchHit]]:
        if not queries:
            return []
        return self.search_vectors(self.embedder.embed(list(queries)), k)

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
