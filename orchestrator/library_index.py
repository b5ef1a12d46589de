"""A library's brick index: what it holds, its fingerprint, and opening (or rebuilding) it beside the library."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

__all__ = ["library_documents", "index_fingerprint", "open_index", "library_stamp"]

log = logging.getLogger(__name__)


def library_documents(library, *, aliases: bool = True) -> list:
    """What the brick index holds: each brick's description, examples and aliases, and the base model's own
    skills with their aliases (`aliases=False`: no aliases, e.g. to measure what they add)."""
    from index import BrickDocument
    from policies import BASE_KEY

    docs = []
    for b in library.list():
        extra = getattr(b.manifest, "aliases", ()) if aliases else ()
        docs.append(BrickDocument(key=b.key, texts=tuple(dict.fromkeys((b.manifest.description, *b.manifest.examples,
                                                                        *extra)))))
    if library.base_examples:
        extra = (getattr(library, "base_aliases", None) or {}) if aliases else {}
        texts = [*library.base_examples, *(a for e in library.base_examples for a in extra.get(e, ()))]
        docs.append(BrickDocument(key=BASE_KEY, texts=tuple(dict.fromkeys(texts))))
    return docs


def index_fingerprint(library) -> str:
    """Changes whenever the bricks or the base model's listed skills change: a stale index is rebuilt."""
    payload = json.dumps([library.fingerprint(), list(library.base_examples),
                          getattr(library, "base_aliases", None) or {}], sort_keys=True)
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def open_index(library, embedder):
    """The brick index saved beside `library`, rebuilt when stale (in memory only when the library is read-only)."""
    from index import BrickIndex, open_or_build

    folder = Path(library.path) / "index"
    fingerprint = index_fingerprint(library)
    try:
        index, rebuilt = open_or_build(folder, lambda: library_documents(library), embedder, fingerprint,
                                       lock=getattr(library, "locked", None))
        if rebuilt:
            log.info("brick index rebuilt at %s", folder)
        return index
    except OSError as e:  # a read-only library (e.g. installed in site-packages): keep the index in memory
        log.warning("cannot write the brick index beside the library (%s); using an in-memory index", e)
        return BrickIndex.build(library_documents(library), embedder, source_fingerprint=fingerprint)


def library_stamp(library) -> object:
    """What changes when the library changes on disk (None for a library that cannot tell)."""
    stamp = getattr(library, "stamp", None)
    return stamp() if stamp else None
