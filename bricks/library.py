"""A brick library on disk: `library.json` + `bricks/<id>/v<version>/` folders, safe to share between processes.

Writes go to a temp folder inside the library and are renamed into place under an exclusive file lock, so a
reader never sees a half-written brick and a failed add leaves the library as it was.

Every id keeps its versions; `versions.json` (written atomically under the lock) records the *active* version
of each id (the one `list()` and routing use; the highest when none is recorded), the highest version an id
ever had (so a number is never reused, even after a removal), and a generation counter that every write bumps.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bricks.atomic import atomic_write_text
from bricks.errors import BrickError, IncompatibleBrickError, LibraryError, ManifestError
from bricks.manifest import MANIFEST_NAME, BaseModelRef, BrickManifest, safe_join, sha256_file

__all__ = ["Brick", "Library", "LibraryConfig", "LibraryState", "VerifyReport", "verify_brick_folder"]

log = logging.getLogger(__name__)

LIBRARY_FILE = "library.json"
STATE_FILE = "versions.json"
LOCK_FILE = ".lock"
LIBRARY_FORMAT = 1
_VERSION_DIR = re.compile(r"^v([1-9][0-9]*)$")
_TEMP_PREFIXES = (".add-", ".removed-")


class LibraryConfig(BaseModel):
    """`library.json`: the base model every brick must be built on, and what that base does unaided."""

    model_config = ConfigDict(frozen=True, extra="allow")

    format: int = LIBRARY_FORMAT
    base_model: BaseModelRef
    base_examples: list[str] = []
    # Bricks (and base skills) answer to the phrasings they were trained on, so a routed step is shown to the
    # model in the nearest such phrasing (fixed-function skills such as the toy world's); off for open tasks.
    canonical_instructions: bool = False


class IdState(BaseModel):
    """One id's entry in `versions.json`: its active version (None: the highest) and the highest it ever had."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    active: int | None = Field(default=None, ge=1)
    last: int = Field(default=0, ge=0)


class LibraryState(BaseModel):
    """`versions.json`: active versions, version high-water marks, and a generation bumped by every write."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: int = LIBRARY_FORMAT
    generation: int = Field(default=0, ge=0)
    bricks: dict[str, IdState] = {}

    def with_id(self, brick_id: str, *, active: int | None, last: int = 0) -> "LibraryState":
        """A copy with `brick_id`'s entry set (its high-water mark never goes down) and the generation bumped."""
        old = self.bricks.get(brick_id, IdState())
        entry = IdState(active=active, last=max(old.last, last, active or 0))
        return self.model_copy(update={"generation": self.generation + 1, "bricks": {**self.bricks, brick_id: entry}})


@dataclass(frozen=True)
class Brick:
    """A brick in a folder: its manifest and where it lives."""

    manifest: BrickManifest
    path: Path

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def key(self) -> str:
        return self.manifest.key


@dataclass(frozen=True)
class VerifyReport:
    """What `Library.verify` found: the bricks checked, one line per problem, and leftovers of interrupted writes."""

    checked: tuple[str, ...]
    problems: tuple[str, ...]
    leftovers: tuple[Path, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class _View:
    """One consistent reading of the library (swapped in whole, so concurrent readers never mix two scans)."""

    bricks: dict[str, dict[int, Brick]] = field(default_factory=dict)
    active: dict[str, int] = field(default_factory=dict)
    state: LibraryState = field(default_factory=LibraryState)
    skipped: tuple[tuple[Path, str], ...] = ()


def verify_brick_folder(folder: Path) -> Brick:
    """Validate a brick folder completely: manifest, safe paths, checksums, kind-specific artifacts."""
    folder = Path(folder).resolve()
    manifest = BrickManifest.from_file(folder / MANIFEST_NAME)
    for entry in manifest.files:
        path = safe_join(folder, entry.path)
        if not path.is_file():
            raise ManifestError(f"brick {manifest.key}: listed file {entry.path!r} is missing")
        if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            raise ManifestError(f"brick {manifest.key}: checksum mismatch for {entry.path!r}")
    brick = Brick(manifest, folder)
    _check_kind(brick)
    return brick


def _check_kind(brick: Brick) -> None:
    """The kind's own artifact checks (files present, no pickles), without loading any tensor."""
    from bricks.kinds import load_brick

    load_brick(brick.path, brick.manifest)


class Library:
    """The bricks built on one base model. Open with `Library.open`, make with `Library.create`."""

    def __init__(self, path: Path, config: LibraryConfig) -> None:
        self.path = Path(path).resolve()
        self.config = config
        self._view = _View()
        self._stamp: tuple = ()
        self._mutex = threading.RLock()
        self._lock_depth = 0
        self._scan()

    # -- opening -----------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path) -> "Library":
        path = Path(path)
        file = path / LIBRARY_FILE
        if not file.is_file():
            raise LibraryError(f"{str(path)!r} is not a brick library (no {LIBRARY_FILE})")
        try:
            config = LibraryConfig.model_validate(json.loads(file.read_text(encoding="utf-8")))
        except (ValueError, ValidationError) as e:
            raise LibraryError(f"{file}: corrupt library file ({str(e).splitlines()[0]})") from None
        return cls(path, config)

    @classmethod
    def create(cls, path: Path, base_model: BaseModelRef, base_examples: list[str] | tuple[str, ...] = (), *,
               canonical_instructions: bool = False) -> "Library":
        path = Path(path)
        if (path / LIBRARY_FILE).exists():
            raise LibraryError(f"a library already exists at {str(path)!r}")
        (path / "bricks").mkdir(parents=True, exist_ok=True)
        config = LibraryConfig(base_model=base_model, base_examples=list(base_examples),
                               canonical_instructions=canonical_instructions)
        atomic_write_text(path / LIBRARY_FILE, config.model_dump_json(indent=2) + "\n")
        return cls(path, config)

    def _read_state(self) -> LibraryState:
        file = self.path / STATE_FILE
        try:
            return LibraryState.model_validate_json(file.read_bytes())
        except FileNotFoundError:
            return LibraryState()
        except (ValueError, ValidationError) as e:
            raise LibraryError(f"{file}: corrupt versions file ({str(e).splitlines()[0]})") from None

    def _write_state(self, state: LibraryState) -> None:
        atomic_write_text(self.path / STATE_FILE, state.model_dump_json(indent=2) + "\n")

    def stamp(self) -> tuple:
        """A cheap token of the library's state on disk (two stats): it changes when a writer commits."""
        out: list[object] = []
        for p in (self.path / STATE_FILE, self.path / "bricks"):
            try:
                st = p.stat()
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def _scan(self) -> None:
        stamp = self.stamp()  # taken first: a write during the scan shows as a change next time
        state = self._read_state()
        bricks: dict[str, dict[int, Brick]] = {}
        skipped: list[tuple[Path, str]] = []
        root = self.path / "bricks"
        for folder in sorted(root.glob("*/v*")) if root.is_dir() else []:
            if not folder.is_dir() or folder.parent.name.startswith(".") or not _VERSION_DIR.match(folder.name):
                continue
            try:
                brick = Brick(BrickManifest.from_file(folder / MANIFEST_NAME), folder.resolve())
                if folder.parent.name != brick.id or folder.name != f"v{brick.version}":
                    raise ManifestError(f"{folder}: holds {brick.key}, expected {folder.parent.name}@{folder.name[1:]}")
                self._check_base(brick.manifest)
                _check_kind(brick)
            except BrickError as e:
                log.warning("skipped brick %s: %s", folder, e)
                skipped.append((folder, str(e)))
                continue
            bricks.setdefault(brick.id, {})[brick.version] = brick
        active = {}
        for brick_id, versions in bricks.items():
            pin = state.bricks[brick_id].active if brick_id in state.bricks else None
            if pin is not None and pin not in versions:
                log.warning("brick %s: active version %d is missing; using version %d", brick_id, pin, max(versions))
                pin = None
            active[brick_id] = pin if pin is not None else max(versions)
        self._view = _View(bricks, active, state, tuple(skipped))
        self._stamp = stamp

    def _check_base(self, manifest: BrickManifest) -> None:
        ours = self.config.base_model.fingerprint
        if manifest.base_model.fingerprint != ours:
            raise IncompatibleBrickError(
                f"brick {manifest.key} was built on base {manifest.base_model.name} {manifest.base_model.fingerprint}, "
                f"but this library's base is {self.config.base_model.name} {ours}")

    # -- reading -----------------------------------------------------------------------------------------
    @property
    def base_model(self) -> BaseModelRef:
        return self.config.base_model

    @property
    def base_examples(self) -> list[str]:
        return list(self.config.base_examples)

    @property
    def skipped(self) -> list[tuple[Path, str]]:
        """Version folders that could not be used, with the reason (logged as warnings when scanned)."""
        return list(self._view.skipped)

    @property
    def generation(self) -> int:
        """How many writes the library has seen (as of the last scan)."""
        return self._view.state.generation

    def changed(self) -> bool:
        """Whether the library on disk changed since this object last read it (see `refresh`)."""
        return self.stamp() != self._stamp

    def refresh(self) -> bool:
        """Re-read the library if it changed on disk (another process or object wrote it); say whether it did."""
        if not self.changed():
            return False
        self._scan()
        return True

    def list(self) -> list[Brick]:
        """The active version of every brick (the highest, unless another one was activated), sorted by id."""
        view = self._view
        return [view.bricks[i][view.active[i]] for i in sorted(view.bricks)]

    def ids(self) -> list[str]:
        return sorted(self._view.bricks)

    def __contains__(self, brick_id: object) -> bool:
        return brick_id in self._view.bricks

    def versions(self, brick_id: str) -> list[Brick]:
        """Every stored version of a brick, oldest first."""
        versions = self._versions_of(brick_id)
        return [versions[v] for v in sorted(versions)]

    def active_version(self, brick_id: str) -> int:
        self._versions_of(brick_id)
        return self._view.active[brick_id]

    def _versions_of(self, brick_id: str) -> dict[int, Brick]:
        versions = self._view.bricks.get(brick_id)
        if not versions:
            raise KeyError(f"no brick {brick_id!r} in library {str(self.path)!r}")
        return versions

    def get(self, brick_id: str, version: int | None = None) -> Brick:
        """A brick by id: its active version, or the exact `version` (any stored one, active or not)."""
        versions = self._versions_of(brick_id)
        if version is None:
            return versions[self._view.active[brick_id]]
        if version not in versions:
            raise KeyError(f"brick {brick_id!r} has no version {version} (has {sorted(versions)})")
        return versions[version]

    def fingerprint(self) -> str:
        """Changes whenever a brick is added, removed or replaced, or another version becomes active."""
        h = hashlib.sha256(self.config.base_model.fingerprint.encode())
        for b in self.list():
            h.update(f"{b.key}:{sha256_file(b.path / MANIFEST_NAME)}\n".encode())
        return "sha256:" + h.hexdigest()

    def leftovers(self) -> list[Path]:
        """Temp folders left by writes that were killed midway (never listed as bricks; removed by the next write)."""
        root = self.path / "bricks"
        if not root.is_dir():
            return []
        found = [p for p in root.iterdir() if p.name.startswith(_TEMP_PREFIXES)]
        found += [p for p in root.glob("*/.*") if p.name.startswith(_TEMP_PREFIXES)]
        return sorted(found)

    def verify(self) -> VerifyReport:
        """Check every stored version (not only the active ones) against the checksums in its manifest."""
        self._scan()
        checked, problems = [], [f"{folder}: {reason}" for folder, reason in self._view.skipped]
        skipped = {folder for folder, _ in self._view.skipped}
        for versions in self._view.bricks.values():
            for brick in versions.values():
                if brick.path in skipped:
                    continue
                try:
                    verify_brick_folder(brick.path)
                    checked.append(brick.key)
                except BrickError as e:
                    problems.append(str(e))
        for brick_id, entry in sorted(self._view.state.bricks.items()):
            if entry.active is not None and entry.active not in self._view.bricks.get(brick_id, {entry.active: 0}):
                problems.append(f"{STATE_FILE}: active version {entry.active} of {brick_id!r} is not stored")
        return VerifyReport(tuple(sorted(checked)), tuple(problems), tuple(self.leftovers()))

    # -- writing -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator["Library"]:
        """Hold the library's exclusive write lock (re-entrant); the library is re-read on entry.

        Writers in other processes (and threads) wait; leftovers of writers that were killed midway are removed.
        """
        with self._mutex:
            if self._lock_depth:
                self._lock_depth += 1
                try:
                    yield self
                finally:
                    self._lock_depth -= 1
                return
            with open(self.path / LOCK_FILE, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self._lock_depth = 1
                try:
                    self._remove_leftovers()
                    self._scan()
                    yield self
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
            if folder.is_dir() and not folder.name.startswith(".") and not any(folder.iterdir()):
                folder.rmdir()

    def _next_version(self, brick_id: str, wanted: int) -> int:
        """`wanted`, unless that number is (or was) taken by this id: then one past the highest ever."""
        folder = self.path / "bricks" / brick_id
        taken = {int(m.group(1)) for p in (folder.iterdir() if folder.is_dir() else ())
                 if (m := _VERSION_DIR.match(p.name))}
        entry = self._view.state.bricks.get(brick_id)
        last = max([entry.last if entry else 0, *taken])
        return wanted if wanted > last else last + 1

    def _copy_in(self, brick: Brick, version: int) -> Brick:
        """Copy a verified brick folder into `bricks/<id>/v<version>` (temp folder, verify, rename); commit state."""
        dest = self.path / "bricks" / brick.id / f"v{version}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".add-", dir=dest.parent))
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
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if dest.parent.is_dir() and not any(dest.parent.iterdir()):
                dest.parent.rmdir()
            raise
        self._write_state(self._view.state.with_id(brick.id, active=version, last=version))
        self._scan()
        return self.get(brick.id, version)

    def add(self, source: Path) -> Brick:
        """Validate the brick folder `source` fully and copy it in; an id already present is refused.

        The brick keeps its manifest's version, unless the id had that version before (then it gets the next).
        """
        brick = verify_brick_folder(source)
        self._check_base(brick.manifest)
        with self.locked():
            if brick.id in self._view.bricks:
                raise LibraryError(f"brick id {brick.id!r} already exists in {str(self.path)!r} "
                                   f"(version {self._view.active[brick.id]}); add a new version with update")
            added = self._copy_in(brick, self._next_version(brick.id, brick.version))
        log.info("added brick %s", added.key)
        return added

    def update(self, source: Path) -> Brick:
        """Add the brick folder `source` as a new version of an existing id and make it active.

        The new version is one past the highest this id ever had (the source manifest's number is replaced);
        older versions are kept, for `rollback`.
        """
        brick = verify_brick_folder(source)
        self._check_base(brick.manifest)
        with self.locked():
            if brick.id not in self._view.bricks:
                raise LibraryError(f"no brick {brick.id!r} to update in {str(self.path)!r}; add it first")
            added = self._copy_in(brick, self._next_version(brick.id, 1))
        log.info("updated brick %s", added.key)
        return added

    def activate(self, brick_id: str, version: int) -> Brick:
        """Make a stored `version` of a brick the active one (what `list()` returns and routing uses)."""
        with self.locked():
            brick = self.get(brick_id, version)
            if self._view.active[brick_id] != version:
                self._write_state(self._view.state.with_id(brick_id, active=version))
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
            self._write_state(state)
            shutil.rmtree(trash)
            self._scan()
        log.info("removed brick %s%s", brick_id, "" if version is None else f"@{version}")
