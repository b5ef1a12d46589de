"""A deterministic embedder without a model, for tests and synthetic benchmarks."""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

__all__ = ["HashingEmbedder"]


class HashingEmbedder:
    """Bag of lowercased words and word bigrams hashed into `dim` signed buckets, L2-normalised."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.name = f"hashing-{dim}"
        self.calls = 0  # how many texts were embedded (tests count re-embedding)

    def embed(self, texts: Sequence[str]):
        import numpy as np

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            words = re.findall(r"[a-z0-9]+", text.lower())
            for tok in words + [a + " " + b for a, b in zip(words, words[1:])]:
                h = zlib.crc32(tok.encode())
                out[i, h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
            norm = float(np.linalg.norm(out[i]))
            out[i] = out[i] / norm if norm else out[i]
        self.calls += len(texts)
        return out
