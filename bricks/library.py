"""A brick library on disk: `library.json` + `bricks/<id>/v<version>/` folders, safe to share between processes.

Writes go to a temp folder inside the library and are renamed into place under an exclusive file lock, so a
reader never sees a half-written brick and a failed add leaves the library as it was. A library that cannot be
written refuses every write with one ReadOnlyLibraryError, unchanged.

Every id keeps its versions; `versions.json` records the *active* version of each id (the one `list()` and
routing use; the highest when none is recorded), the highest version an id ever had (so a number is never
reused, even after a removal), and a generation counter that every write bumps; the append-only `versions.log`
keeps the same record as history, and rebuilds `versions.json` when it is lost (see `bricks.versions`).

No brick folder may hold or be a symlink (refused at add, skipped when scanned, reported by verify); a brick's
files are checked against their checksums where they are used (`Library.checked`, `bricks.integrity`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from bricks.atomic import atomic_write_text
from bricks.errors import BrickError, IncompatibleBrickError, LibraryError, ManifestError, UnsafeArtifactError
from bricks.integrity import Brick, check_adapter, check_brick, check_kind, check_no_symlinks, verify_brick_folder
from bricks.library_writes import LIBRARY_FILE, TEMP_PREFIXES, VERSION_DIR, LibraryWrites
from bricks.manifest import MANIFEST_NAME, BaseModelRef, BrickManifest, sha256_file
from bricks.versions import LOG_FILE, STATE_FILE, IdState, LibraryState, VersionRecord

__all__ = ["Brick", "Library", "LibraryConfig", "LibraryState", "IdState", "VerifyReport", "verify_brick_folder",
           "check_adapter"]

log = logging.getLogger(__name__)

LIBRARY_FORMAT = 1


class LibraryConfig(BaseModel):
    """`library.json`: the base model every brick must be built on, and what that base does unaided."""

    model_config = ConfigDict(frozen=True, extra="allow")

    format: int = LIBRARY_FORMAT
    base_model: BaseModelRef
    base_examples: list[str] = []
    # a base example -> other ways users ask for it: indexed for routing (a hit on one counts as its example)
    base_aliases: dict[str, list[str]] = {}
    # Bricks (and base skills) answer to the phrasings they were trained on, so a routed step is shown to the
    # model in the nearest such phrasing (fixed-function skills such as the toy world's); off for open tasks.
    canonical_instructions: bool = False
    # Every task of this library works on an input (the toy world's words and numbers): the CLI refuses to run
    # an instruction given without one instead of answering about an empty string.
    input_required: bool = False

    @model_validator(mode="after")
    def _aliases_name_examples(self) -> "LibraryConfig":
        unknown = sorted(set(self.base_aliases) - set(self.base_examples))
        if unknown:
            raise ValueError(f"base_aliases name {unknown[0]!r}, which is not one of base_examples")
        return self


def _read_config(file: Path) -> LibraryConfig:
    """`library.json` parsed and validated; LibraryError naming every problem of a corrupt one."""
    try:
        return LibraryConfig.model_validate(json.loads(file.read_text(encoding="utf-8")))
    except ValidationError as e:
        detail = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'settings'}: {err['msg']}"
                           for err in e.errors())
        raise LibraryError(f"{file}: corrupt library file ({detail})") from None
    except ValueError as e:
        raise LibraryError(f"{file}: corrupt library file ({str(e).splitlines()[0]})") from None


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


class Library(LibraryWrites):
    """The bricks built on one base model. Open with `Library.open`, make with `Library.create`."""

    def __init__(self, path: Path, config: LibraryConfig) -> None:
        self.path = Path(path).resolve()
        self.config = config
        self._view = _View()
        self._stamp: tuple = ()
        self._record = VersionRecord(self.path)
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
        return cls(path, _read_config(file))

    @classmethod
    def create(cls, path: Path, base_model: BaseModelRef, base_examples: list[str] | tuple[str, ...] = (), *,
               canonical_instructions: bool = False, input_required: bool = False) -> "Library":
        path = Path(path)
        if (path / LIBRARY_FILE).exists():
            raise LibraryError(f"a library already exists at {str(path)!r}")
        (path / "bricks").mkdir(parents=True, exist_ok=True)
        config = LibraryConfig(base_model=base_model, base_examples=list(base_examples),
                               canonical_instructions=canonical_instructions, input_required=input_required)
        atomic_write_text(path / LIBRARY_FILE, config.model_dump_json(indent=2) + "\n")
        return cls(path, config)

    def stamp(self) -> tuple:
        """A cheap token of the library's state on disk (three stats): it changes when a writer commits."""
        out: list[object] = []
        for p in (self.path / STATE_FILE, self.path / LOG_FILE, self.path / "bricks"):
            try:
                st = p.stat()
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def _scan(self) -> None:
        stamp = self.stamp()  # taken first: a write during the scan shows as a change next time
        state = self._record.read()
        bricks: dict[str, dict[int, Brick]] = {}
        skipped: list[tuple[Path, str]] = []
        root = self.path / "bricks"
        for folder in sorted(root.glob("*/v*")) if root.is_dir() else []:
            if not folder.is_dir() or folder.parent.name.startswith(".") or not VERSION_DIR.match(folder.name):
                continue
            try:
                if folder.parent.is_symlink():
                    raise UnsafeArtifactError(f"brick folder {folder.parent.name!r} is a symlink "
                                              f"(to {os.readlink(folder.parent)!r}); bricks must be inside the library")
                check_no_symlinks(folder, f"brick folder {folder.parent.name}/{folder.name}")
                brick = Brick(BrickManifest.from_file(folder / MANIFEST_NAME), folder.resolve())
                if folder.parent.name != brick.id or folder.name != f"v{brick.version}":
                    raise ManifestError(f"{folder}: holds {brick.key}, expected {folder.parent.name}@{folder.name[1:]}")
                self._check_base(brick.manifest)
                check_kind(brick)
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
    def base_aliases(self) -> dict[str, list[str]]:
        """A base example -> the other phrasings indexed for it (see `LibraryConfig.base_aliases`)."""
        return {example: list(aliases) for example, aliases in self.config.base_aliases.items()}

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
        try:  # base_aliases may have changed (set_base_aliases); a damaged file keeps the config read before
            self.config = _read_config(self.path / LIBRARY_FILE)
        except (OSError, LibraryError) as e:
            log.warning("keeping the library settings read before: %s", e)
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

    def checked(self, brick_id: str, version: int | None = None) -> Brick:
        """`get`, then the brick's files checked against its manifest (checksums cached per process, safetensors
        headers, no symlinks): IntegrityError or UnsafeArtifactError naming the brick when they do not match."""
        brick = self.get(brick_id, version)
        check_brick(brick)
        return brick

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
        found = [p for p in root.iterdir() if p.name.startswith(TEMP_PREFIXES)]
        found += [p for p in root.glob("*/.*") if p.name.startswith(TEMP_PREFIXES)]
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
