"""Reranking a planner's routes with a routing head fitted on its index (see `index.router_head`).

A route class is a brick key, or for the base model's entry one class per base skill: the emergent brick that
serves a base example, else the example itself (a base alias counts as the example it stands for). Every
indexed text of a routable key is a training example of its class. A step's candidates are all classes, ordered
by best cosine plus `weight` times the head's probability; each hit keeps the class's best cosine as its score
and the trained phrasing its best text stands for as its text.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from index import SearchHit
from index.router_head import RERANK_WEIGHT, RouterHead
from policies.routing import route_class

__all__ = ["HeadReranker", "MAX_HEAD_TEXTS"]

MAX_HEAD_TEXTS = 20_000  # past this many indexed texts, routes are ranked by nearest neighbour alone


class HeadReranker:
    """A routing head over an index's texts, and the reranking of search hits it gives."""

    def __init__(self, index, *, targets: Mapping[tuple[str, str], str], groups: Mapping[str, str],
                 hidden: Collection[str], weight: float = RERANK_WEIGHT) -> None:
        import numpy as np
        import torch

        keys, texts, vectors = index_vectors(index)
        self.weight = weight
        self._texts: list[tuple[str, str]] = []  # (key, the trained phrasing the text stands for)
        rows, labels, names = [], [], {}
        for i, (key, text) in enumerate(zip(keys, texts)):
            if key in hidden:
                continue
            shown = targets.get((key, text), text)
            name = route_class(key, shown, groups)
            labels.append(names.setdefault(name, len(names)))
            rows.append(i)
            self._texts.append((key, shown))
        self._vectors = torch.from_numpy(np.ascontiguousarray(vectors[rows], dtype=np.float32))  # [n, dim]
        self.classes = len(names)
        members = [[i for i, c in enumerate(labels) if c == k] for k in range(self.classes)]
        width = max((len(m) for m in members), default=0)
        self._members = torch.tensor([m + [m[0]] * (width - len(m)) for m in members],
                                     dtype=torch.long)  # [classes, width], rows padded with their first member
        self.head = RouterHead.fit(self._vectors.numpy(), labels, self.classes) if self.classes > 1 else None

    def rerank(self, query_vectors, k: int) -> list[list[SearchHit]]:
        """The top `k` route classes of each query vector `[q, dim]`, best first (see the module docstring).

        The arithmetic is torch's, on its thread pool: numpy's BLAS would start threads of its own that compete
        with the model's (measured: executor batches twice as slow on 2 cores)."""
        import torch

        queries = torch.as_tensor(query_vectors, dtype=torch.float32)  # [q, dim]
        sims = queries @ self._vectors.T  # [q, n]
        by_class = sims[:, self._members]  # [q, classes, width]
        best, at = by_class.max(dim=2)  # [q, classes]: each class's best cosine and where in its row
        where = self._members[torch.arange(self.classes), at]  # [q, classes]: the text that gave it
        combined = best
        if self.head is not None:
            combined = best + self.weight * self.head.probabilities(queries)
        order = torch.argsort(-combined, dim=1, stable=True)[:, :k]  # [q, k]
        return [[SearchHit(self._texts[int(where[q, c])][0], float(best[q, c]), self._texts[int(where[q, c])][1])
                 for c in order[q].tolist()] for q in range(sims.shape[0])]


def index_vectors(index) -> tuple[list[str], list[str], object]:
    """Keys, texts and unit vectors `[n, dim]` of everything an index holds (read back from FAISS, or embedded
    again when the FAISS index cannot give vectors back)."""
    import numpy as np

    entries = sorted(index.entries.items())
    keys = [key for _, (key, _) in entries]
    texts = [text for _, (_, text) in entries]
    try:
        faiss_index = index.faiss_index
        vectors = np.stack([faiss_index.reconstruct(int(i)) for i, _ in entries]) if entries else None
    except (RuntimeError, AttributeError):
        vectors = index.embedder.embed(texts)
    return keys, texts, vectors

