"""Saving and loading a brick index beside its library; a stale or foreign index is rebuilt, never trusted."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path

from bricks.atomic import atomic_write_text
from bricks.errors import BrickworkError, ReadOnlyLibraryError
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
    """Write `index.faiss` then `index.json` (the commit point), each through a temp file and a rename.

    A folder that cannot be written raises ReadOnlyLibraryError (a LibraryError naming the library, and a
    PermissionError) with the saved index left as it was.
    """
    import faiss

    folder = Path(folder)
    tmp_faiss = folder / f".{FAISS_FILE}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(tmp_faiss, "wb"):  # faiss reports an unwritable file as a RuntimeError: find out first
            pass
        faiss.write_index(index.faiss_index, str(tmp_faiss))
        meta = {"format": INDEX_FORMAT, "embedder": index.embedder.name, "dim": index.embedder.dim,
                "source_fingerprint": index.source_fingerprint, "next_id": index.next_id, "nprobe": index.nprobe,
                "faiss_ntotal": len(index), "entries": {str(i): list(v) for i, v in index.entries.items()}}
        os.replace(tmp_faiss, folder / FAISS_FILE)
        atomic_write_text(folder / META_FILE, json.dumps(meta))
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp_faiss.unlink(missing_ok=True)
        if isinstance(e, PermissionError) or e.errno == errno.EROFS:
            raise ReadOnlyLibraryError(f"library {str(folder.parent)!r} is read-only: cannot save its brick index "
                                       f"in {str(folder)!r} ({e.strerror or e}); nothing was changed") from None
        raise


def load(folder: Path, embedder, *, expected_fingerprint: str | None) -> BrickIndex:
    """The saved index; `expected_fingerprint` None accepts any library state (to update a stale index)."""
    import faiss

    folder = Path(folder)
    meta_path, faiss_path = folder / META_FILE, folder / FAISS_FILE
    if not meta_path.is_file() or not faiss_path.is_file():
        raise IndexLoadError(f"no brick index in {str(folder)!r}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise IndexLoadError(f"{meta_path}: corrupt index metadata ({str(e).splitlines()[0]})") from None
    entries = _entries(meta, meta_path)
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
    if raw.d != embedder.dim:
        raise IndexLoadError(f"{faiss_path}: vectors of dimension {raw.d}, expected {embedder.dim}")
    ids = _faiss_ids(raw)
    if ids is not None and ids != set(entries):
        odd = sorted(ids ^ set(entries))
        raise IndexLoadError(f"{faiss_path}: vector ids do not match {META_FILE}'s entries (e.g. {odd[:5]})")
    fingerprint = expected_fingerprint if expected_fingerprint is not None else str(meta.get("source_fingerprint"))
    return BrickIndex(embedder, raw, entries, source_fingerprint=fingerprint, next_id=meta["next_id"],
                      nprobe=meta["nprobe"])


def _entries(meta: object, meta_path: Path) -> dict[int, tuple[str, str]]:
    """`index.json`'s entries as {vector id: (key, text)}, or IndexLoadError naming the first malformed field."""
    def bad(problem: str) -> IndexLoadError:
        return IndexLoadError(f"{meta_path}: malformed index metadata: {problem}")

    if not isinstance(meta, dict):
        raise bad(f"expected a JSON object, got {type(meta).__name__}")
    for name, kind in (("entries", dict), ("next_id", int), ("nprobe", int), ("faiss_ntotal", int),
                       ("source_fingerprint", str)):
        if name not in meta:
            raise bad(f"missing key {name!r}")
        if not isinstance(meta[name], kind) or isinstance(meta[name], bool):
            raise bad(f"{name!r} is {type(meta[name]).__name__} {meta[name]!r:.60}, expected {kind.__name__}")
    entries: dict[int, tuple[str, str]] = {}
    for i, value in meta["entries"].items():
        if not (isinstance(i, str) and i.isdigit()):
            raise bad(f"entry id {i!r} is not a non-negative integer")
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
            raise bad(f"entry {i} is {value!r:.80}, expected [key, text]")
        entries[int(i)] = (value[0], value[1])
    if entries and meta["next_id"] <= max(entries):
        raise bad(f"next_id {meta['next_id']} is not above the highest entry id {max(entries)}")
    if meta["nprobe"] < 1:
        raise bad(f"nprobe {meta['nprobe']} is below 1")
    return entries


def _faiss_ids(raw) -> set[int] | None:
    """The ids of a FAISS index's vectors (IDMap or IVF), None for a kind whose ids cannot be listed."""
    import faiss

    if hasattr(raw, "id_map"):
        return {int(i) for i in faiss.vector_to_array(raw.id_map)}
    try:
        invlists = faiss.extract_index_ivf(raw).invlists
    except (RuntimeError, AttributeError):
        return None
    ids: set[int] = set()
    for lst in range(invlists.nlist):
        n = invlists.list_size(lst)
        if n:
            ids.update(int(i) for i in faiss.rev_swig_ptr(invlists.get_ids(lst), n))
    return ids


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
