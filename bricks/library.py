"""A brick library on disk: `library.json` + `bricks/<id>/v<version>/` folders, safe to share between processes.

Writes go to a temp folder inside the library and are renamed into place under an exclusive file lock, so a
reader never sees a half-written brick and a failed add leaves the library as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from bricks.atomic import atomic_write_text
from bricks.errors import BrickError, IncompatibleBrickError, LibraryError, ManifestError
from bricks.manifest import MANIFEST_NAME, BaseModelRef, BrickManifest, safe_join, sha256_file

__all__ = ["Brick", "Library", "LibraryConfig", "verify_brick_folder"]

log = logging.getLogger(__name__)

LIBRARY_FILE = "library.json"
LIBRARY_FORMAT = 1


class LibraryConfig(BaseModel):
    """`library.json`: the base model every brick must be built on, and what that base does unaided."""

    model_config = ConfigDict(frozen=True, extra="allow")

    format: int = LIBRARY_FORMAT
    base_model: BaseModelRef
    base_examples: list[str] = []
    # Bricks (and base skills) answer to the phrasings they were trained on, so a routed step is shown to the
    # model in the nearest such phrasing (fixed-function skills such as the toy world's); off for open tasks.
    canonical_instructions: bool = False


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
    if brick.kind == "lora":
        from bricks.lora import LoraBrick

        LoraBrick.from_dir(brick.path, brick.manifest)
    else:
        from bricks.ffn_mask import FfnMaskBrick

        FfnMaskBrick.from_dir(brick.path, brick.manifest)


class Library:
    """The bricks built on one base model. Open with `Library.open`, make with `Library.create`."""

    def __init__(self, path: Path, config: LibraryConfig) -> None:
        self.path = Path(path).resolve()
        self.config = config
        self.skipped: list[tuple[Path, str]] = []
        self._bricks: dict[str, dict[int, Brick]] = {}
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

    def _scan(self) -> None:
        self._bricks, self.skipped = {}, []
        root = self.path / "bricks"
        for folder in sorted(root.glob("*/v*")) if root.is_dir() else []:
            if not folder.is_dir() or folder.parent.name.startswith("."):
                continue
            try:
                brick = Brick(BrickManifest.from_file(folder / MANIFEST_NAME), folder.resolve())
                if folder.parent.name != brick.id or folder.name != f"v{brick.version}":
                    raise ManifestError(f"{folder}: holds {brick.key}, expected {folder.parent.name}@{folder.name[1:]}")
                self._check_base(brick.manifest)
                _check_kind(brick)
            except BrickError as e:
                log.warning("skipped brick %s: %s", folder, e)
                self.skipped.append((folder, str(e)))
                continue
            self._bricks.setdefault(brick.id, {})[brick.version] = brick

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

    def list(self) -> list[Brick]:
        """The active (highest) version of every brick, sorted by id."""
        return [versions[max(versions)] for _, versions in sorted(self._bricks.items())]

    def get(self, brick_id: str, version: int | None = None) -> Brick:
        versions = self._bricks.get(brick_id)
        if not versions:
            raise KeyError(f"no brick {brick_id!r} in library {str(self.path)!r}")
        if version is None:
            return versions[max(versions)]
        if version not in versions:
            raise KeyError(f"brick {brick_id!r} has no version {version} (has {sorted(versions)})")
        return versions[version]

    def fingerprint(self) -> str:
        """Changes whenever a brick is added, removed or replaced."""
        h = hashlib.sha256(self.config.base_model.fingerprint.encode())
        for b in self.list():
            h.update(f"{b.key}:{sha256_file(b.path / MANIFEST_NAME)}\n".encode())
        return "sha256:" + h.hexdigest()

    # -- writing -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        with open(self.path / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._scan()
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add(self, source: Path) -> Brick:
        """Validate the brick folder `source` fully and copy it in; an id already present is refused."""
        brick = verify_brick_folder(source)
        self._check_base(brick.manifest)
        with self._locked():
            if brick.id in self._bricks:
                raise LibraryError(f"brick id {brick.id!r} already exists in {str(self.path)!r}")
            dest = self.path / "bricks" / brick.id / f"v{brick.version}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".add-", dir=dest.parent))
            try:
                files = [MANIFEST_NAME] + [e.path for e in brick.manifest.files]
                for rel in files:
                    target = tmp / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(safe_join(brick.path, rel), target)
                verify_brick_folder(tmp)
                os.replace(tmp, dest)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                if not any(dest.parent.iterdir()):
                    dest.parent.rmdir()
                raise
            self._scan()
        log.info("added brick %s", brick.key)
        return self.get(brick.id, brick.version)

    def remove(self, brick_id: str) -> None:
        """Remove every version of a brick."""
        with self._locked():
            if brick_id not in self._bricks:
                raise KeyError(f"no brick {brick_id!r} in library {str(self.path)!r}")
            folder = self.path / "bricks" / brick_id
            trash = self.path / "bricks" / f".removed-{brick_id}"
            os.replace(folder, trash)
            shutil.rmtree(trash)
            self._scan()

