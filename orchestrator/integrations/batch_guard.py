"""What keeps a batch job's output right while it runs: one job per output file, and the library it started with.

- `OutputLock`: an exclusive advisory lock (`flock`) on `OUT.lock`, held while a job has `OUT` open. A second job
  on the same output is refused at once, naming the holder's pid. The OS drops the lock when the holder ends in
  any way (kill -9 too), so a lock file left behind never blocks the rerun.
- `LibraryPin`: a view of the job's library of its own, to tell whether a brick version the job's rows were
  routed to is still there (in the library, with its files) when their chunk is written.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from orchestrator.integrations.batch_rows import BatchError

try:
    import fcntl
except ImportError:  # not POSIX: no lock (logged)
    fcntl = None  # type: ignore[assignment]

__all__ = ["OutputLock", "LibraryPin", "lock_path"]

log = logging.getLogger(__name__)


def lock_path(out: Path) -> Path:
    """The lock file of the output `out`: `OUT.lock` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".lock")


class OutputLock:
    """An exclusive, non-blocking advisory lock on an output file's `OUT.lock`, naming its holder's pid."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = lock_path(self.out)
        self._file: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> "OutputLock":
        """Take the lock, or raise a BatchError naming the output and the pid of the job that holds it."""
        if self._file is not None:
            return self
        if fcntl is None:
            log.warning("no file locks on this platform: nothing stops two jobs writing %s at once", self.out)
            return self
        while True:
            f = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                f.seek(0)
                holder = f.read().strip() if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK) else ""
                f.close()
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise BatchError(f"{self.path}: cannot lock the output ({e.strerror})") from None
                raise BatchError(f"{self.out} is being written by another batch job (pid {holder or 'unknown'}, "
                                 f"lock {self.path}); wait for it to end or choose another -o") from None
            try:
                same = os.fstat(f.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            f.close()  # the last holder removed this file as we opened it: lock the one at the path now
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        """Drop the lock and remove the lock file (a file left by a killed job is harmless: nobody holds it)."""
        f, self._file = self._file, None
        if f is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        f.close()


class LibraryPin:
    """The library a job started with, watched through a view of its own (never the orchestrator's)."""

    def __init__(self, path: Path) -> None:
        from bricks.library import Library

        self.library = Library.open(Path(path))

    @property
    def path(self) -> Path:
        return self.library.path

    def fingerprint(self) -> str:
        """The library's fingerprint as it is on disk now (what a job identity holds), read afresh: files deleted
        behind the library's back do not change its stamp."""
        from bricks.library import Library
        from orchestrator.library_index import index_fingerprint

        self.library = Library.open(self.library.path)
        return index_fingerprint(self.library)

    def removed(self, keys: Iterable[str]) -> str | None:
        """The first brick key (`id@version`) of `keys` that is no longer in the library or lost a file, or None."""
        from bricks.manifest import MANIFEST_NAME

        keys = sorted(set(keys))
        if not keys:
            return None
        self.library.refresh()
        for key in keys:
            brick_id, _, version = key.rpartition("@")
            try:
                brick = self.library.get(brick_id, int(version))
            except (KeyError, ValueError):
                return key
            files = [MANIFEST_NAME, *(f.path for f in brick.manifest.files)]
            if not all((brick.path / name).is_file() for name in files):
                return key
        return None
