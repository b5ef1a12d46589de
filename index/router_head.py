"""A routing head: a linear classifier over the index's own text embeddings, to rerank nearest-neighbour routes.

Nearest-neighbour routing scores a route by its single most similar indexed text, so one stray phrasing of
another brick can win an unseen wording. The head is a multinomial logistic regression fitted on every indexed
text (labelled with the route it belongs to) over the same unit vectors: it weighs all of a route's texts at
once and generalizes to wordings none of them has. `orchestrator.reranker.HeadReranker` orders candidate routes
by `max cosine + RERANK_WEIGHT * probability`; the cosine stays the hit's score, so routing thresholds mean what
they meant. Fitting takes well under a second for a few thousand texts (torch L-BFGS, deterministic); it is meant
for indexes of up to a few thousand routes, where a class per route is cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["RouterHead", "RERANK_WEIGHT"]

RERANK_WEIGHT = 0.3  # how much the head's probability (0..1) adds to a route's best cosine (0..1)


@dataclass(frozen=True)
class RouterHead:
    """Weights `[dim, classes]` and biases `[classes]` of a logistic regression on cosine-scaled logits."""

    weights: object  # numpy float32 [dim, classes]
    bias: object  # numpy float32 [classes]
    scale: float

    @classmethod
    def fit(cls, vectors, labels: Sequence[int], n_classes: int, *, l2: float = 1e-3, scale: float = 10.0,
            max_iter: int = 300) -> "RouterHead":
        """Fit on unit vectors `[n, dim]` with class ids `labels` (each in [0, n_classes))."""
        import numpy as np
        import torch

        if len(labels) != len(vectors) or not len(labels):
            raise ValueError(f"a router head needs one label per vector, got {len(labels)} for {len(vectors)}")
        x = torch.as_tensor(np.asarray(vectors, dtype=np.float32))  # [n, dim]
        y = torch.as_tensor(np.asarray(labels, dtype=np.int64))  # [n]
        w = torch.zeros(x.shape[1], n_classes, requires_grad=True)  # [dim, classes]
        b = torch.zeros(n_classes, requires_grad=True)  # [classes]
        opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ w * scale + b, y) + l2 * (w ** 2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        return cls(w.detach().numpy().astype(np.float32), b.detach().numpy().astype(np.float32), scale)

    def probabilities(self, queries):
        """Class probabilities `[q, classes]` (a torch tensor) of unit query vectors `[q, dim]` (numpy or torch).
        Computed with torch: numpy's BLAS threads would compete with the model's."""
        import torch

        x = torch.as_tensor(queries, dtype=torch.float32)  # [q, dim]
        logits = x @ torch.as_tensor(self.weights) * self.scale + torch.as_tensor(self.bias)  # [q, classes]
        return torch.softmax(logits, dim=1)
