"""Batch jobs: run every row of an instruction file (JSONL, CSV, Parquet) and write one output row per id.

A job reads rows of `id`, `instruction`, optional `input` and optional gold `output` (`batch_rows`), and appends
rows of `id`, `output`, `steps` (the bricks of each step) and `error` (null or a message) to a JSONL output file.

- Rows that cannot run (malformed JSON, no instruction, text that is not UTF-8, a bad value) become error rows;
  the job goes on.
- The output belongs to one job: a sidecar `OUT.job.json` holds the job's identity (a hash of the input file's
  bytes and the fingerprints of the model and the library), and an output of another job is refused. One job
  at a time: `OUT.lock` is locked while a job has the output open (`batch_guard.OutputLock`).
- Resumable: rows are written a chunk at a time, each line a complete JSON object, flushed and fsynced. A
  rerun drops a trailing partial line and skips the ids already written, so a job killed at any moment (even
  with kill -9) loses and duplicates nothing.
- Chunks are fixed slices of the input (rows `k*C .. (k+1)*C`); a chunk that was cut short is run again
  whole and only its missing ids are written, so every row is computed in the same batch as in an
  uninterrupted run, and a resumed job writes the same outputs.
- The library is pinned: the orchestrator does not follow library changes while the job runs, and a chunk
  routed to a brick version that was removed meanwhile is not written: the job stops with a BatchError, keeps
  the rows written, and its identity takes the library as it is now, so a rerun resumes with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn

from orchestrator.integrations.batch_guard import LibraryPin, OutputLock
from orchestrator.integrations.batch_rows import (
    FORMATS,
    BatchError,
    InputFile,
    TaskRow,
    detect_format,
    encode_rows,
    read_tasks,
    task_from_mapping,
)

__all__ = ["BatchError", "TaskRow", "InputFile", "BatchJob", "BatchSummary", "read_tasks", "run_chunk",
           "run_local", "pinned", "job_identity", "identity_for", "FORMATS", "DEFAULT_CHUNK_SIZE",
           "detect_format", "task_from_mapping"]

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 1024
JOB_FORMAT = 1


# -- running ----------------------------------------------------------------------------------------------
def _output_row(row: TaskRow, result=None, error: str | None = None) -> dict:
    if result is None:
        return {"id": row.id, "output": None, "steps": [], "error": error or row.error}
    steps = [{"instruction": s.instruction, "bricks": [b.key for b in s.bricks]} for s in result.steps]
    return {"id": row.id, "output": None if result.error else result.output, "steps": steps, "error": result.error}


def run_chunk(orc, rows: Sequence[TaskRow]) -> list[dict]:
    """The output row of each input row, in order: the runnable rows are planned and run in one `run_batch`.

    If the batch raises, each row is run alone, so one bad row fails alone; no exception escapes.
    """
    valid = [r for r in rows if r.error is None]
    results: list[object] = []
    if valid:
        try:
            results = list(orc.run_batch([(r.instruction, r.input or "") for r in valid]))
        except Exception as e:  # noqa: BLE001 (isolated below)
            log.warning("a chunk of %d rows failed (%s); running each row alone", len(valid), e)
            results = []
            for r in valid:
                try:
                    results.append(orc.run_batch([(r.instruction, r.input or "")])[0])
                except Exception as e1:  # noqa: BLE001 (becomes this row's error)
                    results.append(e1)
    by_id = dict(zip((r.id for r in valid), results))
    out = []
    for r in rows:
        res = by_id.get(r.id)
        if r.error is not None:
            out.append(_output_row(r))
        elif isinstance(res, Exception):
            message = str(res).strip().splitlines()[0] if str(res).strip() else ""
            out.append(_output_row(r, error=f"{type(res).__name__}: {message}".rstrip(": ")))
        else:
            out.append(_output_row(r, res))
    return out


def _job_hash(ident: dict) -> str:
    keys = ("input_sha256", "model_fingerprint", "library_fingerprint")
    return hashlib.sha256(json.dumps({k: ident[k] for k in keys}, sort_keys=True).encode()).hexdigest()[:16]


def identity_for(inp: InputFile, model_fingerprint: str, model_dir: Path, library) -> dict:
    """The identity of the job running `inp` on a model (by fingerprint) and an open `Library`."""
    from orchestrator.library_index import index_fingerprint

    ident = {"input_sha256": inp.sha256, "model_fingerprint": model_fingerprint,
             "library_fingerprint": index_fingerprint(library)}
    return {"format": JOB_FORMAT, "job": _job_hash(ident), **ident, "input": str(inp.path.resolve()),
            "model": str(model_dir), "library": str(library.path)}


def _inputs_required(inp: InputFile) -> InputFile:
    """`inp` with each runnable row that has no input field made an error row (as `brickwork run` without
    --input is refused for a library whose tasks all need an input); an empty input ("") still runs."""
    rows = tuple(replace(r, error=f"{r.where} (id {r.id!r}): missing field input; this library's tasks need an "
                                  'input (give "input": "" to run on an empty one)')
                 if r.error is None and r.input is None else r for r in inp.rows)
    return replace(inp, rows=rows)


def job_identity(inp: InputFile, model: Path | None, library: Path | None) -> dict:
    """What makes two runs the same job: the input bytes, the model weights, the library (bricks, base skills)."""
    from bricks.fingerprint import model_fingerprint
    from orchestrator.factory import model_dir as resolve_model
    from orchestrator.factory import open_library

    model_dir = resolve_model(model)
    return identity_for(inp, model_fingerprint(model_dir), model_dir, open_library(library))


def _sidecar(out: Path) -> Path:
    return out.with_name(out.name + ".job.json")


@dataclass
class BatchSummary:
    """What a job did: rows in the input and in the output, errors, speed, brick usage, accuracy on gold rows."""

    rows: int
    written: int  # by this run
    skipped: int  # already in the output when this run started
    errors: int
    seconds: float
    rows_per_s: float
    brick_usage: dict[str, int]
    gold_rows: int
    accuracy: float | None
    output: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class BatchJob:
    """An input file bound to an output file; refuses an output that belongs to another job."""

    def __init__(self, inp: InputFile, out: Path, identity: dict, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if chunk_size < 1:
            raise BatchError(f"chunk size must be at least 1, got {chunk_size}")
        self.input = inp
        self.out = Path(out)
        self.identity = identity
        self.chunk_size = chunk_size
        self.done: set[str] = set()
        self.lock = OutputLock(self.out)
        self.pin: LibraryPin | None = None
        if self.out.resolve() == self.input.path.resolve():
            raise BatchError(f"the output {str(self.out)!r} is the input file; choose another -o")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()  # before the output is read or repaired: one job at a time
        try:
            self._open()
            if identity.get("library") is not None:
                self.pin = LibraryPin(Path(identity["library"]))
                if getattr(self.pin.library.config, "input_required", False):
                    self.input = _inputs_required(self.input)
        except BaseException:
            self.lock.release()
            raise

    def close(self) -> None:
        """Release the output (its lock); the job object is not used after this."""
        self.lock.release()

    def __enter__(self) -> "BatchJob":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def open(cls, input_path: Path, out: Path, *, model: Path | None = None, library: Path | None = None,
             fmt: str | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE) -> "BatchJob":
        """Read the input, check (or claim) the output, and find the ids already written."""
        inp = read_tasks(input_path, fmt)
        return cls(inp, out, job_identity(inp, model, library), chunk_size=chunk_size)

    # -- the output file ---------------------------------------------------------------------------------
    def _open(self) -> None:
        from bricks.atomic import atomic_write_text

        side = _sidecar(self.out)
        if side.is_file():
            try:
                theirs = json.loads(side.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise BatchError(f"{side}: unreadable job file ({e}); delete it and {self.out} to start over") from None
            if theirs.get("job") != self.identity["job"]:
                what = [k for k in ("input_sha256", "model_fingerprint", "library_fingerprint")
                        if theirs.get(k) != self.identity[k]]
                raise BatchError(f"{self.out} belongs to another job (input {theirs.get('input')!r}; differs in "
                                 f"{', '.join(what) or 'job id'}); choose another -o or delete {self.out} and {side}")
            if theirs.get("library_changes"):  # resumed after the library changed under an earlier run
                self.identity = {**self.identity, "library_changes": theirs["library_changes"]}
        elif self.out.exists() and self.out.stat().st_size > 0:
            raise BatchError(f"{self.out} exists and was not written by a brickwork batch job (no {side.name}); "
                             "choose another -o or delete it")
        else:
            atomic_write_text(side, json.dumps(self.identity, indent=2) + "\n")
        self.out.touch(exist_ok=True)
        self.done = self._recover()

    def _recover(self) -> set[str]:
        """The ids already written; a trailing partial line (a write cut short) is truncated away."""
        data = self.out.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.info("dropping a partial last line of %d bytes from %s", len(data) - end, self.out)
            with open(self.out, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        known = {r.id for r in self.input.rows}
        done: set[str] = set()
        for n, line in enumerate(data[:end].split(b"\n")[:-1], start=1):
            try:
                row = json.loads(line)
                row_id = row["id"]
            except (ValueError, TypeError, KeyError):
                raise BatchError(f"{self.out}:{n}: not an output row (corrupt file?); delete {self.out} to "
                                 "start over") from None
            if row_id not in known:
                raise BatchError(f"{self.out}:{n}: id {row_id!r} is not in the input; the output does not "
                                 "belong to this job")
            if row_id in done:
                raise BatchError(f"{self.out}:{n}: id {row_id!r} written twice; the output is corrupt")
            done.add(row_id)
        return done

    def pending_chunks(self) -> list[tuple[int, tuple[TaskRow, ...]]]:
        """(chunk number, its rows) for each fixed input slice with an id not yet written."""
        rows, c = self.input.rows, self.chunk_size
        chunks = [(k, rows[k * c:(k + 1) * c]) for k in range((len(rows) + c - 1) // c)]
        return [(k, chunk) for k, chunk in chunks if any(r.id not in self.done for r in chunk)]

    @property
    def remaining(self) -> int:
        return sum(r.id not in self.done for r in self.input.rows)

    def write(self, out_rows: Iterable[dict]) -> int:
        """Append the rows whose ids are not written yet, as complete lines, then flush and fsync.

        Rows routed to a brick version that left the library meanwhile are not written: `library_changed`.
        """
        fresh = [r for r in out_rows if r["id"] not in self.done]
        if not fresh:
            return 0
        if self.pin is not None:
            gone = self.pin.removed(b for r in fresh for step in r["steps"] for b in step["bricks"])
            if gone is not None:
                self.library_changed(f"brick {gone} was removed from the library while the job ran")
        blob = encode_rows(fresh)
        with open(self.out, "ab") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        self.done.update(r["id"] for r in fresh)
        return len(fresh)

    def library_changed(self, what: str) -> NoReturn:
        """Stop the job: the rows written are kept, and the job's identity takes the library as it is now, so a
        rerun resumes with it (the change is recorded in `OUT.job.json`)."""
        from bricks.atomic import atomic_write_text

        before = self.identity.get("library_fingerprint")
        if self.pin is not None:
            now = self.pin.fingerprint()
            changes = [*self.identity.get("library_changes", []),
                       {"reason": what, "library_fingerprint": before, "rows_written": len(self.done)}]
            self.identity = {**self.identity, "library_fingerprint": now, "library_changes": changes}
            self.identity["job"] = _job_hash(self.identity)
            atomic_write_text(_sidecar(self.out), json.dumps(self.identity, indent=2) + "\n")
        log.warning("batch job on %s stopped: %s", self.out, what)
        raise BatchError(f"{what}; the {len(self.done)} rows written are kept in {self.out}; "
                         "rerun to resume with the library as it is now")

    def summary(self, *, written: int, skipped: int, seconds: float) -> BatchSummary:
        """Counted over the whole output file, so a resumed job reports the whole job."""
        gold = {r.id: r.gold for r in self.input.rows if r.gold is not None}
        errors, correct, scored = 0, 0, 0
        usage: Counter[str] = Counter()
        with open(self.out, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                errors += row["error"] is not None
                for step in row["steps"]:
                    usage.update(step["bricks"] or ["base"])
                if row["id"] in gold:
                    scored += 1
                    correct += row["error"] is None and (row["output"] or "").strip() == gold[row["id"]].strip()
        return BatchSummary(rows=len(self.input.rows), written=written, skipped=skipped, errors=errors,
                            seconds=round(seconds, 3), rows_per_s=round(written / seconds, 3) if seconds > 0 else 0.0,
                            brick_usage=dict(usage.most_common()), gold_rows=scored,
                            accuracy=round(correct / scored, 4) if scored else None, output=str(self.out))


Progress = Callable[[int, int], None]  # (rows written so far by this run, rows this run has to write)


@contextmanager
def pinned(orc, job: BatchJob) -> Iterator[None]:
    """While the job runs, `orc` routes with the library as the job found it (no reload on library changes).

    An orchestrator over another library than the job's is refused; one whose library changed since the job
    was opened stops the job (`BatchJob.library_changed`).
    """
    if orc is None or not hasattr(orc, "reload_on_change"):
        yield
        return
    from orchestrator.library_index import index_fingerprint

    planner = getattr(orc, "planner", None)
    if planner is not None and job.pin is not None and Path(planner.library.path).resolve() != job.pin.path:
        raise BatchError(f"the orchestrator's library {str(planner.library.path)!r} is not the job's library "
                         f"{str(job.pin.path)!r}")
    previous = orc.__dict__.get("reload_on_change")
    orc.reload_on_change = False
    try:
        if planner is not None and job.pin is not None and \
                index_fingerprint(planner.library) != job.identity.get("library_fingerprint"):
            job.library_changed("the library changed between opening the job and loading the orchestrator")
        yield
    finally:
        if previous is None:
            del orc.reload_on_change
        else:
            orc.reload_on_change = previous


def run_local(job: BatchJob, orc, progress: Progress | None = None) -> BatchSummary:
    """Run the job's pending chunks one after another on one Orchestrator, appending as each chunk ends.

    The orchestrator is `pinned` for the job; a removed brick stops it with a BatchError (rows written are kept).
    """
    skipped, total = len(job.done), job.remaining
    t0, written = time.perf_counter(), 0
    if progress:
        progress(0, total)
    with pinned(orc, job):
        for _, chunk in job.pending_chunks():
            written += job.write(run_chunk(orc, chunk))
            if progress:
                progress(written, total)
    return job.summary(written=written, skipped=skipped, seconds=time.perf_counter() - t0)
