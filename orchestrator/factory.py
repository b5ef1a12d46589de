"""The API and CLI edge: a model folder or library not named means the toy world's. Nothing below this edge
knows the toy world."""

from __future__ import annotations

from pathlib import Path

__all__ = ["model_dir", "open_library", "open_planner", "describe"]


def model_dir(model: str | Path | None = None) -> Path:
    """The model folder `model`, or the toy world's when None."""
    from bricks.toyworld.paths import world_model_dir

    return Path(model) if model is not None else world_model_dir()


def open_library(library: str | Path | None = None):
    """The library at `library`, or the toy world's when None."""
    from bricks.library import Library
    from bricks.toyworld.paths import world_library_dir

    return Library.open(Path(library) if library is not None else world_library_dir())


def open_planner(library: Path | None = None, *, embedder=None, routing=None, decomposer=None):
    """A Planner over a library and its (fresh or rebuilt) index; loads no model."""
    from orchestrator.library_index import open_index
    from orchestrator.planner import Planner

    lib = open_library(library)
    if embedder is None:
        from index import SentenceTransformerEmbedder

        embedder = SentenceTransformerEmbedder()
    if routing is None:
        from orchestrator.calibrate import calibrated_routing

        routing = calibrated_routing(lib.path)
    return Planner(lib, open_index(lib, embedder), routing=routing, decomposer=decomposer)


def describe(model: Path | None = None, library: Path | None = None) -> dict[str, object]:
    """Where the model, library, index and embedder are, and what they hold."""
    from importlib.metadata import version

    from bricks.model_io import check_model_dir
    from index import SentenceTransformerEmbedder

    lib = open_library(library)
    folder = check_model_dir(model_dir(model))
    embedder = SentenceTransformerEmbedder()
    index_dir = Path(lib.path) / "index"
    return {
        "brickwork": version("brickwork"),
        "model": str(folder),
        "base_model": f"{lib.base_model.name} {lib.base_model.fingerprint}",
        "library": str(lib.path),
        "bricks": len(lib.list()),
        "index": str(index_dir) + ("" if (index_dir / "index.json").exists() else " (not built yet)"),
        "embedder": embedder.name,
    }
