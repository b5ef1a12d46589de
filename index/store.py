"""Saving and loading a brick index beside its library; a stale or foreign index is rebuilt, never trusted."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path

from bricks.atomic import atomic_write_text
from bricks.errors import BrickworkError
from index.brick_index import BrickDocument, BrickIndex

__all__ = ["IndexLoadError", "StaleIndexError", "save", "load", "open_or_build", "INDEX_FORMAT"]

log = logging.getLogger(__name__)

INDEX_FORMAT = 1
FAISS_FILE = "index.faiss"
META_FILE = "index.json"


class IndexLoadError(BrickworkError):
    """The index files are missing or corrupt."""


class StaleIndexError(BrickworkError):
    """The index was built from another library state or with another embedder."""


def save(index: BrickIndex, folder: Path) -> None:
    """Write `index.faiss` then `index.json` (the commit point), each through a temp file and a rename."""
    import faiss

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp_faiss = folder / f".{FAISS_FILE}.tmp"
    faiss.write_index(index.faiss_index, str(tmp_faiss))
    meta = {"format": INDEX_FORMAT, "embedder": index.embedder.name, "dim": index.embedder.dim,
            "source_fingerprint": index.source_fingerprint, "next_id": index.next_id, "nprobe": index.nprobe,
            "faiss_ntotal": len(index), "entries": {str(i): list(v) for i, v in index.entries.items()}}
    os.replace(tmp_faiss, folder / FAISS_FILE)
    atomic_write_text(folder / META_FILE, json.dumps(meta))


def load(folder: Path, embedder, *, expected_fingerprint: str | None) -> BrickIndex:
    """The saved index; `expected_fingerprint` None accepts any library state (to update a stale index)."""
    import faiss

    folder = Path(folder)
    meta_path, faiss_path = folder / META_FILE, folder / FAISS_FILE
    if not meta_path.is_file() or not faiss_path.is_file():
        raise IndexLoadError(f"no brick index in {str(folder)!r}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        entries = {int(i): (k, t) for i, (k, t) in meta["entries"].items()}
    except (ValueError, KeyError, TypeError) as e:
        raise IndexLoadError(f"{meta_path}: corrupt index metadata ({e})") from None
    if meta.get("format") != INDEX_FORMAT:
        raise StaleIndexError(f"{meta_path}: index format {meta.get('format')!r}, expected {INDEX_FORMAT}")
    if meta.get("embedder") != embedder.name or meta.get("dim") != embedder.dim:
        raise StaleIndexError(f"{meta_path}: built with {meta.get('embedder')!r} dim {meta.get('dim')}, "
                              f"not {embedder.name!r} dim {embedder.dim}")
    if expected_fingerprint is not None and meta.get("source_fingerprint") != expected_fingerprint:
        raise StaleIndexError(f"{meta_path}: built from library {meta.get('source_fingerprint')}, "
                              f"which is now {expected_fingerprint}")
    try:
        raw = faiss.read_index(str(faiss_path))
    except RuntimeError as e:
        raise IndexLoadError(f"{faiss_path}: corrupt FAISS index ({str(e).splitlines()[0]})") from None
    if raw.ntotal != meta.get("faiss_ntotal") or raw.ntotal != len(entries):
        raise IndexLoadError(f"{faiss_path}: holds {raw.ntotal} vectors, its metadata {len(entries)}")
    fingerprint = expected_fingerprint if expected_fingerprint is not None else str(meta.get("source_fingerprint"))
    return BrickIndex(embedder, raw, entries, source_fingerprint=fingerprint, next_id=meta.get("next_id"),
                      nprobe=int(meta.get("nprobe", 16)))


def open_or_build(folder: Path, documents: Callable[[], Sequence[BrickDocument]], embedder,
                  fingerprint: str, *, lock: Callable[[], ContextManager] | None = None) -> tuple[BrickIndex, bool]:
    """The saved index if it is fresh; otherwise bring it up to date from `documents()`, save it, and say so.

    An index saved from an older state of the same library, with the same embedder, is updated in place
    (only new, changed or removed documents are embedded or dropped); anything else is rebuilt. `lock` (e.g.
    the library's write lock) is held while a stale index is updated and saved, so writers do not interleave.
    """
    try:
        return load(folder, embedder, expected_fingerprint=fingerprint), False
    except (IndexLoadError, StaleIndexError) as e:
        log.info("updating the brick index: %s", e)
    if lock is not None:
        with lock():
            return open_or_build(folder, documents, embedder, fingerprint)
    try:
        index = load(folder, embedder, expected_fingerprint=None)
        added, removed = index.sync(documents(), source_fingerprint=fingerprint)
        log.info("brick index updated: %d document(s) added or changed, %d removed", len(added), len(removed))
    except (IndexLoadError, StaleIndexError):
        index = BrickIndex.build(documents(), embedder, source_fingerprint=fingerprint)
    save(index, folder)
    return index, True
