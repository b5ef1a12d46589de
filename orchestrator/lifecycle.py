"""Following a library that changes while it is used: new, updated, rolled back and removed bricks.

A running Orchestrator calls `follow_library` after its library changed on disk (another process trained or
added a brick) or after it changed the library itself (`Orchestrator.add_brick` and friends). The brick index
is copied, brought up to date (only new or changed bricks are embedded) and swapped in, so planning in other
threads never sees a half-updated index; bricks that do not fit the loaded model are left out of routing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from policies import BASE_KEY

__all__ = ["LibraryChange", "exclude_misfits", "follow_library", "sync_saved_index"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LibraryChange:
    """What a reload changed in routing: brick keys (`id@version`) that became routable, and ones that left."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


def exclude_misfits(planner, model_config, bricks=None) -> None:
    """Leave out of routing, with a warning naming it and the reason, every brick (of `bricks`, default: the
    library's) whose files fail their integrity check (checksums, safetensors headers, symlinks) or that does
    not fit the loaded model: the same check at start-up and after every reload, so a bad brick never wins."""
    from bricks.errors import BrickError
    from bricks.integrity import check_brick
    from bricks.kinds import misfit

    for brick in planner.library.list() if bricks is None else bricks:
        if brick.key in planner.excluded:
            continue
        try:
            check_brick(brick)
        except BrickError as e:
            planner.exclude(brick.key, str(e))
            continue
        reason = misfit(brick.path, brick.manifest, model_config)
        if reason:
            planner.exclude(brick.key, reason)


def follow_library(planner, *, model_config=None) -> LibraryChange:
    """Make the planner's index and routing match its library as it is now (call `library.refresh()` first)."""
    from orchestrator.library_index import index_fingerprint, library_documents

    library = planner.library
    fingerprint = index_fingerprint(library)
    if fingerprint == planner.index.source_fingerprint:
        return LibraryChange()
    before = set(planner.index.keys())
    docs = library_documents(library)
    if model_config is not None:  # keep misfits out of routing before they become searchable
        exclude_misfits(planner, model_config, [b for b in library.list() if b.key not in before])
    index = planner.index.copy()
    added, removed = index.sync(docs, source_fingerprint=fingerprint)
    planner.index = index
    planner.refresh()
    change = LibraryChange(tuple(k for k in added if k != BASE_KEY), tuple(k for k in removed if k != BASE_KEY))
    if change.changed:
        log.info("library %s changed: +%s -%s", library.path, ",".join(change.added) or "none",
                 ",".join(change.removed) or "none")
    return change


def sync_saved_index(library, embedder) -> tuple[int, bool]:
    """Bring the index saved beside `library` up to date, under the library's lock; (vectors, changed)."""
    from index import open_or_build
    from orchestrator.library_index import index_fingerprint, library_documents

    with library.locked():  # re-reads the library: the index matches it as it is now
        index, changed = open_or_build(Path(library.path) / "index", lambda: library_documents(library), embedder,
                                       index_fingerprint(library))
    return len(index), changed
