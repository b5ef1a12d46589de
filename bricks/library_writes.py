"""The writing half of `bricks.Library`: the write lock, adds, updates, activation, rollback and removal.

Every write holds the library's exclusive file lock, goes to a temp folder inside the library that is renamed
into place, and is recorded in `versions.log` and `versions.json` (`bricks.versions`); when the record cannot be
written the brick is taken out (or put back) again, so a failed write leaves the library as it was. A library
that cannot be written refuses with one ReadOnlyLibraryError.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bricks.atomic import atomic_write_text
from bricks.errors import LibraryError, ReadOnlyLibraryError
from bricks.integrity import Brick, check_adapter, verify_brick_folder
from bricks.manifest import MANIFEST_NAME, safe_join
from bricks.versions import LOG_FILE, STATE_FILE, IdState, LibraryState, VersionRecord

if TYPE_CHECKING:
    from bricks.library import Library

__all__ = ["LibraryWrites", "LOCK_FILE"]

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
VERSION_DIR = re.compile(r"^v([1-9][0-9]*)$")
TEMP_PREFIXES = (".add-", ".removed-")


LIBRARY_FILE = "library.json"


def clean_phrasings(texts: Sequence[str], what: str) -> list[str]:
    """`texts` stripped, blanks and repeats dropped; a text that is not a string, or longer than 1,000
    characters, is refused (ValueError naming it)."""
    out: list[str] = []
    for text in texts:
        if not isinstance(text, str) or len(text) > 1000:
            raise ValueError(f"{what}: {str(text)[:60]!r} is not a phrasing (a string of at most 1000 characters)")
        if text.strip() and text.strip() not in out:
            out.append(text.strip())
    return out


def _is_read_only(e: BaseException) -> bool:
    return isinstance(e, PermissionError) or (isinstance(e, OSError) and e.errno == errno.EROFS)


class LibraryWrites:
    """Mixed into `Library`: its write operations (the reading half and the scan live in `bricks.library`)."""

    path: Path
    _mutex: threading.RLock
    _lock_depth: int
    _record: VersionRecord

    def _commit(self, state: LibraryState, *, op: str, brick_id: str, version: int | None) -> None:
        """Log the write that makes `state` current, then write `versions.json` (a library without a log first
        logs the state it had: versions.json's, with the versions stored on disk as high-water marks)."""
        before = self._view.state
        start = before
        for i, versions in self._view.bricks.items():
            start = start.merged_marks(LibraryState(bricks={i: IdState(last=max(versions))}))
        self._record.commit(before, state, op=op, brick_id=brick_id, version=version, start=start)

    def rebuild_versions(self) -> LibraryState:
        """Rewrite `versions.json` from `versions.log` (e.g. after it was deleted or damaged); the state."""
        with self.locked():
            state = self._record.rebuild()
            self._scan()
        return state

    # -- writing -----------------------------------------------------------------------------------------
    def _read_only(self, e: OSError) -> ReadOnlyLibraryError:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return ReadOnlyLibraryError(f"library {str(self.path)!r} is read-only{where}; nothing was changed")

    def _check_writable(self) -> None:
        """Refuse a write up front when the library's folders or record files cannot be written."""
        for path in (self.path, self.path / "bricks", self.path / STATE_FILE, self.path / LOG_FILE):
            if path.exists() and not os.access(path, os.W_OK):
                raise self._read_only(PermissionError(errno.EACCES, "read-only", str(path)))

    @contextlib.contextmanager
    def locked(self) -> Iterator["Library"]:
        """Hold the library's exclusive write lock (re-entrant); the library is re-read on entry.

        Writers in other processes (and threads) wait; leftovers of writers that were killed midway are removed.
        A library that cannot be written raises ReadOnlyLibraryError (a LibraryError) and is left as it was.
        """
        with self._mutex:
            if self._lock_depth:
                self._lock_depth += 1
                try:
                    yield self
                finally:
                    self._lock_depth -= 1
                return
            self._check_writable()
            try:
                lock = open(self.path / LOCK_FILE, "a")
            except OSError as e:
                if _is_read_only(e):
                    raise self._read_only(e) from None
                raise
            with lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self._lock_depth = 1
                try:
                    self._remove_leftovers()
                    self._scan()
                    yield self
                except OSError as e:
                    if _is_read_only(e) and not isinstance(e, ReadOnlyLibraryError):
                        raise self._read_only(e) from None
                    raise
                finally:
                    self._lock_depth = 0
                    fcntl.flock(lock, fcntl.LOCK_UN)

    _locked = locked  # the name used before the lock was public

    def _remove_leftovers(self) -> None:
        for path in self.leftovers():
            log.warning("removing %s, left by an interrupted write", path)
            shutil.rmtree(path, ignore_errors=True)
        root = self.path / "bricks"
        for folder in root.iterdir() if root.is_dir() else []:
            if folder.is_dir() and not folder.is_symlink() and not folder.name.startswith(".") \
                    and not any(folder.iterdir()):
                folder.rmdir()

    def _next_version(self, brick_id: str, wanted: int) -> int:
        """`wanted`, unless that number is (or was) taken by this id: then one past the highest ever."""
        folder = self.path / "bricks" / brick_id
        taken = {int(m.group(1)) for p in (folder.iterdir() if folder.is_dir() else ())
                 if (m := VERSION_DIR.match(p.name))}
        entry = self._view.state.bricks.get(brick_id)
        last = max([entry.last if entry else 0, *taken])
        return wanted if wanted > last else last + 1

    def _copy_in(self, brick: Brick, version: int, op: str) -> Brick:
        """Copy a verified brick folder into `bricks/<id>/v<version>` (temp folder, verify, rename); commit state."""
        dest = self.path / "bricks" / brick.id / f"v{version}"
        if dest.parent.is_symlink():
            raise LibraryError(f"{dest.parent} is a symlink; brick folders must be inside the library")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".add-", dir=dest.parent))
        placed = False
        try:
            for rel in [e.path for e in brick.manifest.files]:
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(safe_join(brick.path, rel), target)
            if version == brick.version:
                shutil.copyfile(brick.path / MANIFEST_NAME, tmp / MANIFEST_NAME)
            else:
                brick.manifest.model_copy(update={"version": version}).save(tmp / MANIFEST_NAME)
            verify_brick_folder(tmp)
            os.replace(tmp, dest)
            placed = True
            self._commit(self._view.state.with_id(brick.id, active=version, last=version), op=op,
                         brick_id=brick.id, version=version)
        except BaseException:
            if placed:  # the record could not be written: take the brick out again
                os.replace(dest, tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            if dest.parent.is_dir() and not any(dest.parent.iterdir()):
                dest.parent.rmdir()
            raise
        self._scan()
        return self.get(brick.id, version)

    def add(self, source: Path, *, model_config=None, force: bool = False) -> Brick:
        """Validate the brick folder `source` fully and copy it in; an id already present is refused.

        The brick keeps its manifest's version, unless the id had that version before (then it gets the next).
        An adapter whose tensor names or target modules match nothing of the model (`model_config`, a
        transformers config; without it, the LoRA layer pattern) is refused; one matching only partly too,
        unless `force`.
        """
        brick = verify_brick_folder(source)
        self._check_base(brick.manifest)
        check_adapter(brick, model_config, force=force)
        with self.locked():
            if brick.id in self._view.bricks:
                raise LibraryError(f"brick id {brick.id!r} already exists in {str(self.path)!r} "
                                   f"(version {self._view.active[brick.id]}); add a new version with update")
            added = self._copy_in(brick, self._next_version(brick.id, brick.version), "add")
        log.info("added brick %s", added.key)
        return added

    def update(self, source: Path, *, model_config=None, force: bool = False) -> Brick:
        """Add the brick folder `source` as a new version of an existing id and make it active.

        The new version is one past the highest this id ever had (the source manifest's number is replaced);
        older versions are kept, for `rollback`. Adapters are checked as in `add`.
        """
        brick = verify_brick_folder(source)
        self._check_base(brick.manifest)
        check_adapter(brick, model_config, force=force)
        with self.locked():
            if brick.id not in self._view.bricks:
                raise LibraryError(f"no brick {brick.id!r} to update in {str(self.path)!r}; add it first")
            added = self._copy_in(brick, self._next_version(brick.id, 1), "update")
        log.info("updated brick %s", added.key)
        return added

    def activate(self, brick_id: str, version: int) -> Brick:
        """Make a stored `version` of a brick the active one (what `list()` returns and routing uses)."""
        with self.locked():
            brick = self.get(brick_id, version)
            if self._view.active[brick_id] != version:
                self._commit(self._view.state.with_id(brick_id, active=version), op="activate",
                             brick_id=brick_id, version=version)
                self._scan()
        log.info("brick %s is active", brick.key)
        return brick

    def rollback(self, brick_id: str, to: int | None = None) -> Brick:
        """Make the version before the active one active again (or version `to`); newer versions are kept."""
        with self.locked():
            current = self.active_version(brick_id)
            if to is None:
                older = [v for v in self._view.bricks[brick_id] if v < current]
                if not older:
                    raise LibraryError(f"brick {brick_id!r} has no version before {current} to roll back to")
                to = max(older)
            return self.activate(brick_id, to)

    def set_aliases(self, brick_id: str, aliases: Sequence[str], version: int | None = None) -> Brick:
        """Replace the routing aliases of a stored version of a brick (default: the active one).

        Aliases are other ways users ask for what the brick does: the index holds them beside its description
        and examples; the model never sees them. Only `brick.json`'s `aliases` change (atomically), not the
        weights; the write is logged like any other, so running planners pick it up.
        """
        cleaned = clean_phrasings(aliases, f"aliases of {brick_id!r}")
        with self.locked():
            brick = self.get(brick_id, version)
            brick.manifest.model_copy(update={"aliases": cleaned}).save(brick.path / MANIFEST_NAME)
            self._commit(self._view.state.with_id(brick_id, active=self._view.active[brick_id]), op="aliases",
                         brick_id=brick_id, version=brick.version)
            self._scan()
        log.info("brick %s has %d aliases", brick.key, len(cleaned))
        return self.get(brick_id, brick.version)

    def set_base_aliases(self, aliases: Mapping[str, Sequence[str]]) -> None:
        """Replace the routing aliases of the base model's examples (`LibraryConfig.base_aliases`): each key
        must be one of `base_examples`. `library.json` is replaced atomically."""
        cleaned = {example: clean_phrasings(texts, f"aliases of base example {example!r}")
                   for example, texts in aliases.items()}
        with self.locked():
            unknown = [e for e in cleaned if e not in self.config.base_examples]
            if unknown:
                raise LibraryError(f"base alias key {unknown[0]!r} is not one of the library's base_examples")
            config = self.config.model_copy(update={"base_aliases": {e: t for e, t in cleaned.items() if t}})
            atomic_write_text(self.path / LIBRARY_FILE, config.model_dump_json(indent=2) + "\n")
            self.config = config
            state = self._view.state
            self._record.write_json(state.model_copy(update={"generation": state.generation + 1}))
            self._scan()
        log.info("base examples have %d aliases", sum(len(t) for t in cleaned.values()))

    def remove(self, brick_id: str, version: int | None = None) -> None:
        """Remove every version of a brick, or one `version` (if it was active, the highest left becomes active)."""
        with self.locked():
            versions = self._versions_of(brick_id)
            if version is not None and version not in versions:
                raise KeyError(f"brick {brick_id!r} has no version {version} (has {sorted(versions)})")
            state = self._view.state
            if version is None or set(versions) == {version}:
                folder = self.path / "bricks" / brick_id
                trash = self.path / "bricks" / f".removed-{brick_id}"
                state = state.with_id(brick_id, active=None, last=max(versions))
            else:
                folder = self.path / "bricks" / brick_id / f"v{version}"
                trash = folder.with_name(f".removed-v{version}")
                active = self._view.active[brick_id]
                active = max(set(versions) - {version}) if active == version else active
                state = state.with_id(brick_id, active=active, last=max(versions))
            os.replace(folder, trash)
            try:
                self._commit(state, op="remove", brick_id=brick_id, version=version)
            except BaseException:
                os.replace(trash, folder)  # the record could not be written: put the brick back
                raise
            shutil.rmtree(trash)
            self._scan()
        log.info("removed brick %s%s", brick_id, "" if version is None else f"@{version}")
