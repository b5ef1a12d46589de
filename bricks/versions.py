"""The record of a library's versions: `versions.json` (the current state) and `versions.log` (its history).

`versions.json` holds each id's *active* version (None: the highest stored), the highest version the id ever had
(so a number is never reused, even after a removal) and a generation counter that every write bumps. It is not
the only record: every write first appends one JSON line to the append-only `versions.log` (op, id, version,
active, last, generation, time), then replaces `versions.json`. When `versions.json` is missing, corrupt, or
behind the log (a writer killed between the two, an old copy restored), the state is replayed from the log, so
a deleted `versions.json` neither undoes a rollback nor lets a version number be reused. A library written
before the log existed opens as it is; its first logged write starts the log with the state as it was then.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bricks.atomic import atomic_write_text
from bricks.errors import LibraryError

__all__ = ["IdState", "LibraryState", "VersionRecord", "STATE_FILE", "LOG_FILE", "replay"]

log = logging.getLogger(__name__)

STATE_FILE = "versions.json"
LOG_FILE = "versions.log"
STATE_FORMAT = 1
_TAIL_BYTES = 8192  # enough for the last line of the log


class IdState(BaseModel):
    """One id's entry in `versions.json`: its active version (None: the highest) and the highest it ever had."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    active: int | None = Field(default=None, ge=1)
    last: int = Field(default=0, ge=0)


class LibraryState(BaseModel):
    """`versions.json`: active versions, version high-water marks, and a generation bumped by every write."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: int = STATE_FORMAT
    generation: int = Field(default=0, ge=0)
    bricks: dict[str, IdState] = {}

    def with_id(self, brick_id: str, *, active: int | None, last: int = 0) -> "LibraryState":
        """A copy with `brick_id`'s entry set (its high-water mark never goes down) and the generation bumped."""
        old = self.bricks.get(brick_id, IdState())
        entry = IdState(active=active, last=max(old.last, last, active or 0))
        return self.model_copy(update={"generation": self.generation + 1, "bricks": {**self.bricks, brick_id: entry}})

    def merged_marks(self, other: "LibraryState") -> "LibraryState":
        """A copy whose high-water marks are the higher of this state's and `other`'s, id by id."""
        bricks = dict(self.bricks)
        for brick_id, entry in other.bricks.items():
            mine = bricks.get(brick_id, IdState())
            if entry.last > mine.last:
                bricks[brick_id] = IdState(active=mine.active, last=entry.last)
        return self.model_copy(update={"bricks": bricks})


def replay(entries: list[dict]) -> LibraryState:
    """The state that the log `entries` (oldest first) describe."""
    state = LibraryState()
    for entry in entries:
        brick_id = entry["id"]
        old = state.bricks.get(brick_id, IdState())
        new = IdState(active=entry.get("active"), last=max(old.last, int(entry.get("last") or 0)))
        state = LibraryState(generation=max(state.generation, int(entry.get("generation") or 0)),
                             bricks={**state.bricks, brick_id: new})
    return state


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class VersionRecord:
    """`versions.json` and `versions.log` of the library at `root`; writes must hold the library's lock."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.state_file = self.root / STATE_FILE
        self.log_file = self.root / LOG_FILE

    # -- reading -----------------------------------------------------------------------------------------
    def _read_json(self) -> LibraryState | None:
        """`versions.json`, None when it is missing; a LibraryError when it is corrupt."""
        try:
            return LibraryState.model_validate_json(self.state_file.read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, ValidationError) as e:
            raise LibraryError(f"{self.state_file}: corrupt versions file ({str(e).splitlines()[0]})") from None

    def read_log(self) -> list[dict] | None:
        """The log's entries, oldest first (None when there is no log); lines cut by a killed writer are skipped."""
        try:
            text = self.log_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        entries = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                    raise ValueError("not an entry object")
                IdState(active=entry.get("active"), last=int(entry.get("last") or 0))
            except (ValueError, TypeError, ValidationError) as e:
                log.warning("%s:%d: skipped an unreadable log line (%s)", self.log_file, n, str(e).splitlines()[0])
                continue
            entries.append(entry)
        return entries

    def _log_generation(self) -> int | None:
        """The generation of the log's last complete entry (reads only its tail), None without a log."""
        try:
            with open(self.log_file, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - _TAIL_BYTES))
                tail = f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return None
        for line in reversed(tail.splitlines()):
            try:
                return int(json.loads(line)["generation"])
            except (ValueError, KeyError, TypeError):
                continue
        return -1  # a log without one readable line in its tail: replay it all

    def read(self) -> LibraryState:
        """The current state: `versions.json` when it is up to date with the log, else replayed from the log."""
        try:
            saved = self._read_json()
        except LibraryError as e:
            if not self.log_file.is_file():
                raise
            log.warning("%s; rebuilding it from %s", e, self.log_file.name)
            saved = None
        log_generation = self._log_generation()
        if log_generation is None:
            return saved if saved is not None else LibraryState()
        if saved is not None and log_generation == saved.generation:
            return saved
        logged = replay(self.read_log() or [])
        if saved is None:
            log.warning("%s is missing or corrupt: state rebuilt from %s (generation %d)", self.state_file,
                        self.log_file.name, logged.generation)
            return logged
        if logged.generation > saved.generation:
            log.warning("%s (generation %d) is behind %s (generation %d): using the log", self.state_file,
                        saved.generation, self.log_file.name, logged.generation)
            return logged.merged_marks(saved)
        return saved.merged_marks(logged)

    # -- writing (under the library's lock) --------------------------------------------------------------
    def _append(self, entries: list[dict]) -> None:
        data = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries).encode("utf-8")
        fd = os.open(self.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size:  # a line cut by a killed writer must not swallow the next entry
                with open(self.log_file, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        data = b"\n" + data
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def commit(self, before: LibraryState, after: LibraryState, *, op: str, brick_id: str,
               version: int | None, start: LibraryState | None = None) -> None:
        """Record the write that turns `before` into `after`: append it to the log, then replace `versions.json`.

        A library without a log first logs `start` (default `before`): its state as it was before the log.
        """
        entries = []
        if not self.log_file.exists():
            seed = start if start is not None else before
            entries += [{"op": "start", "id": i, "version": None, "active": e.active, "last": e.last,
                         "generation": seed.generation, "time": _now()} for i, e in sorted(seed.bricks.items())]
        entry = after.bricks[brick_id]
        entries.append({"op": op, "id": brick_id, "version": version, "active": entry.active, "last": entry.last,
                        "generation": after.generation, "time": _now()})
        self._append(entries)
        self.write_json(after)

    def write_json(self, state: LibraryState) -> None:
        """Replace `versions.json` with `state` (atomically)."""
        atomic_write_text(self.state_file, state.model_dump_json(indent=2) + "\n")

    def rebuild(self) -> LibraryState:
        """Rewrite `versions.json` from the log (merged with what `versions.json` still holds); the new state."""
        state = self.read()
        self.write_json(state)
        return state
