"""A brick's files checked where they are used, not only by `verify`: checksums, safetensors headers, symlinks.

`check_brick` is what executors and routing call before a brick's files are read: every file its manifest lists
must be a regular file inside the brick folder (no symlink anywhere under the folder), have the listed size and
sha256, and, for `.safetensors` files, a header that parses and covers the file exactly (a truncated file or a
renamed pickle fails here, with the brick named, instead of deep inside a loader). Checksums are kept per process
by (path, size, mtime_ns, inode), so a brick is hashed once per process, not on every load, and a file that
changes on disk (new size, mtime or inode) is hashed again. Nothing is written: reading a library (which may be
read-only, or shipped inside a package) never changes it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bricks.errors import IntegrityError, UnsafeArtifactError
from bricks.manifest import MANIFEST_NAME, BrickManifest, safe_join, sha256_file

__all__ = ["Brick", "verify_brick_folder", "check_adapter", "check_brick", "check_kind", "check_folder",
           "check_no_symlinks", "check_safetensors", "file_sha256", "clear_cache"]

log = logging.getLogger(__name__)

_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
                "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}

_Key = tuple[str, int, int, int]
_memory: dict[_Key, str] = {}
_mutex = threading.Lock()


class _BrickLike(Protocol):
    manifest: BrickManifest
    path: Path


def clear_cache() -> None:
    """Forget every checksum cached in this process."""
    with _mutex:
        _memory.clear()


def file_sha256(path: Path, *, cached: bool = True) -> str:
    """The sha256 of `path`, from this process's cache when the file's (size, mtime_ns, inode) are unchanged."""
    path = Path(path)
    st = path.stat()
    key: _Key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if cached:
        with _mutex:
            if key in _memory:
                return _memory[key]
    digest = sha256_file(path)
    with _mutex:
        _memory[key] = digest
    return digest


def check_no_symlinks(folder: Path, label: str) -> None:
    """Raise UnsafeArtifactError when `folder`, or anything under it, is a symbolic link."""
    folder = Path(folder)
    if folder.is_symlink():
        raise UnsafeArtifactError(f"{label}: {str(folder)!r} is a symlink (to {os.readlink(folder)!r}); "
                                  "brick folders must hold their own files")
    for top, dirs, files in os.walk(folder, followlinks=False):
        for name in sorted(dirs + files):
            path = Path(top) / name
            if path.is_symlink():
                raise UnsafeArtifactError(f"{label}: {str(path.relative_to(folder))!r} is a symlink "
                                          f"(to {os.readlink(path)!r}); brick files must be regular files")


def check_safetensors(path: Path, label: str) -> None:
    """Raise IntegrityError unless `path` is a safetensors file whose header parses and covers the file exactly.

    Reads only the 8-byte length and the JSON header: a truncated file, a pickle renamed to `.safetensors` or
    a header pointing past the end fails here, before any loader sees it.
    """
    name = Path(path).name
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise IntegrityError(f"{label}: {name} is not a safetensors file ({size} bytes, expected a header)")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, _MAX_HEADER):
            raise IntegrityError(f"{label}: {name} is not a readable safetensors file (header length {n} "
                                 f"exceeds the file's {size} bytes: truncated, or another format)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise IntegrityError(f"{label}: {name} is not a readable safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise IntegrityError(f"{label}: {name}: safetensors header is a {type(header).__name__}, expected an object")
    data_len, end = size - 8 - n, 0
    for tensor, info in header.items():
        if tensor == "__metadata__":
            continue
        try:
            begin, stop = info["data_offsets"]
            count = 1
            for d in info["shape"]:
                count *= int(d)
            width = _DTYPE_BYTES[info["dtype"]]
            ok = isinstance(begin, int) and isinstance(stop, int) and 0 <= begin <= stop <= data_len \
                and stop - begin == count * width
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise IntegrityError(f"{label}: {name}: tensor {tensor!r} has a bad header entry {info!r} "
                                 f"(data is {data_len} bytes)")
        end = max(end, stop)
    if end != data_len:
        raise IntegrityError(f"{label}: {name}: tensors span {end} bytes but the file holds {data_len} "
                             "(truncated or padded)")


def check_folder(folder: Path, manifest: BrickManifest, *, cached: bool = True) -> None:
    """Check the brick folder `folder` against `manifest`: no symlinks, every listed file present with its size
    and sha256, safetensors headers readable. Raises UnsafeArtifactError or IntegrityError naming the brick."""
    folder = Path(folder)
    label = f"brick {manifest.key}"
    check_no_symlinks(folder, label)
    for entry in manifest.files:
        path = safe_join(folder, entry.path)
        if not path.is_file():
            raise IntegrityError(f"{label}: listed file {entry.path!r} is missing")
        if path.stat().st_size != entry.size or file_sha256(path, cached=cached) != entry.sha256:
            raise IntegrityError(f"{label}: checksum mismatch for {entry.path!r}")
        if path.suffix == ".safetensors":
            check_safetensors(path, label)


def check_brick(brick: _BrickLike, *, cached: bool = True) -> None:
    """Raise IntegrityError or UnsafeArtifactError unless `brick`'s files match its manifest (see the module doc).

    Cheap after the first call in a process: unchanged files are not hashed again.
    """
    folder = Path(brick.path)
    if not (folder / MANIFEST_NAME).is_file():
        raise IntegrityError(f"brick {brick.manifest.key}: {str(folder)!r} has no {MANIFEST_NAME} any more")
    check_folder(folder, brick.manifest, cached=cached)


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
    """Validate a brick folder completely: manifest, no symlinks, safe paths, checksums (always recomputed),
    safetensors headers, kind-specific artifacts."""
    folder = Path(folder).resolve()
    manifest = BrickManifest.from_file(folder / MANIFEST_NAME)
    check_folder(folder, manifest, cached=False)
    brick = Brick(manifest, folder)
    check_kind(brick)
    return brick


def check_adapter(brick: Brick, model_config=None, *, force: bool = False) -> None:
    """Refuse a brick whose tensors match no module of the model (or only some of them, unless `force`), and,
    given `model_config`, one that does not fit it (unless `force`): IncompatibleBrickError listing the names."""
    from bricks.kinds import load_brick

    loaded = load_brick(brick.path, brick.manifest)
    if hasattr(loaded, "check_names"):
        loaded.check_names(model_config, force=force)
    if model_config is not None and not force:
        loaded.check_fits(model_config)


def check_kind(brick: Brick) -> None:
    """The kind's own artifact checks (files present, no pickles), without loading any tensor."""
    from bricks.kinds import load_brick

    load_brick(brick.path, brick.manifest)
