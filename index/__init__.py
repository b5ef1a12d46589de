"""brickwork's index: embedders and the FAISS index of brick descriptions. FAISS and models load lazily."""

from index.brick_index import BrickDocument, BrickIndex, SearchHit
from index.embedder import DEFAULT_EMBEDDER, Embedder, SentenceTransformerEmbedder
from index.fake import HashingEmbedder
from index.store import IndexLoadError, StaleIndexError, load, open_or_build, save

__all__ = ["BrickDocument", "BrickIndex", "DEFAULT_EMBEDDER", "Embedder", "HashingEmbedder", "IndexLoadError",
           "SearchHit", "SentenceTransformerEmbedder", "StaleIndexError", "load", "open_or_build", "save"]
