"""Batch jobs: run every row of an instruction file (JSONL, CSV, Parquet) and write one output row per id.

A job reads rows of `id`, `instruction`, optional `input` and optional gold `output`, and appends rows of
`id`, `output`, `steps` (the bricks of each step) and `error` (null or a message) to a JSONL output file.

- Rows that cannot run (malformed JSON, no instruction, a bad value) become error rows; the job goes on.
- The output belongs to one job: a sidecar `OUT.job.json` holds the job's identity (a hash of the input file's
  bytes and the fingerprints of the model and the library), and an output of another job is refused.
- Resumable: rows are written a chunk at a time, each line a complete JSON object, flushed and fsynced. A
  rerun drops a trailing partial line and skips the ids already written, so a job killed at any moment (even
  with kill -9) loses and duplicates nothing.
- Chunks are fixed slices of the input (rows `k*C .. (k+1)*C`); a chunk that was cut short is run again
  whole and only its missing ids are written, so every row is computed in the same batch as in an
  uninterrupted run, and a resumed job writes the same outputs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bricks.errors import BrickworkError
from orchestrator.validation import InputError, check_text

__all__ = ["BatchError", "TaskRow", "InputFile", "BatchJob", "BatchSummary", "read_tasks", "run_chunk",
           "run_local", "FORMATS", "DEFAULT_CHUNK_SIZE"]

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "csv", "parquet")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
DEFAULT_CHUNK_SIZE = 1024
JOB_FORMAT = 1


class BatchError(BrickworkError):
    """The job cannot start or go on (an unreadable input, an output of another job); one line naming the value."""


@dataclass(frozen=True)
class TaskRow:
    """One input row: a task to run, or, when `error` is set, a row that becomes an error row."""

    id: str
    instruction: str = ""
    input: str = ""
    gold: str | None = None
    error: str | None = None
    where: str = ""  # "line 7" / "row 7": for messages


@dataclass(frozen=True)
class InputFile:
    """The rows of an input file, in file order, and the sha256 of its bytes."""

    path: Path
    format: str
    rows: tuple[TaskRow, ...]
    sha256: str


# -- reading ----------------------------------------------------------------------------------------------
def detect_format(path: Path, fmt: str | None = None) -> str:
    """`fmt` if given, else from the suffix (.jsonl/.ndjson, .csv, .parquet/.pq)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise BatchError(f"unknown input format {fmt!r}; expected one of {', '.join(FORMATS)}")
        return fmt
    found = _SUFFIXES.get(Path(path).suffix.lower())
    if found is None:
        raise BatchError(f"cannot tell the format of {str(path)!r} from its suffix {Path(path).suffix!r}; "
                         f"give --format ({', '.join(FORMATS)})")
    return found


def _text_field(obj: Mapping, key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InputError(f"field {key} must be a string, got {type(value).__name__}")
    return value if isinstance(value, str) else str(value)


def task_from_mapping(obj: object, number: int, where: str) -> TaskRow:
    """A TaskRow from one parsed row; a row that cannot run becomes a TaskRow with `error` set.

    A missing or empty `id` is the row's number in the file (1-based line for JSONL, data row for CSV/Parquet).
    """
    if not isinstance(obj, Mapping):
        return TaskRow(id=f"<{where}>", error=f"{where}: expected an object, got {type(obj).__name__}", where=where)
    raw_id = obj.get("id")
    if raw_id is None or raw_id == "":
        row_id = str(number)
    elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool):
        row_id = str(raw_id)
    else:
        return TaskRow(id=f"<{where}>", error=f"{where}: id must be a string or an integer, got {raw_id!r}",
                       where=where)
    try:
        instruction = _text_field(obj, "instruction")
        if instruction is None:
            raise InputError("missing field instruction")
        instruction = check_text(instruction, "instruction")
        text = check_text(_text_field(obj, "input") or "", "input", allow_empty=True)
        gold = _text_field(obj, "output")
    except InputError as e:
        return TaskRow(id=row_id, error=f"{where}: {e}", where=where)
    return TaskRow(id=row_id, instruction=instruction, input=text, gold=gold, where=where)


def _salvaged_id(raw: bytes) -> str | None:
    """The id of a line that is not UTF-8, when the rest of it parses, so its error row keeps its id."""
    try:
        obj = json.loads(raw.decode("utf-8", "replace"))
    except ValueError:
        return None
    row_id = obj.get("id") if isinstance(obj, dict) else None
    if isinstance(row_id, bool) or not isinstance(row_id, (str, int)) or row_id == "":
        return None
    return str(row_id) if "\ufffd" not in str(row_id) else None


def _jsonl_rows(data: bytes) -> Iterator[TaskRow]:
    for n, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        where = f"line {n}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield TaskRow(id=_salvaged_id(raw) or f"<{where}>", where=where,
                          error=f"{where}: not UTF-8 (bad byte 0x{raw[e.start]:02x} at column {e.start + 1})")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield TaskRow(id=f"<{where}>", error=f"{where}: malformed JSON ({e.msg} at column {e.colno})",
                          where=where)
            continue
        yield task_from_mapping(obj, n, where)


def _csv_rows(data: bytes, path: Path) -> Iterator[TaskRow]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise BatchError(f"{path}: not UTF-8 (bad byte 0x{data[e.start]:02x} on line {line}); "
                         "save it as UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None or "instruction" not in reader.fieldnames:
        raise BatchError(f"{path}: no 'instruction' column (columns: {reader.fieldnames or []})")
    for n, obj in enumerate(reader, start=1):
        if None in obj:  # more cells than columns
            yield TaskRow(id=f"<row {n}>", error=f"row {n}: {len(obj[None])} more cell(s) than columns",
                          where=f"row {n}")
            continue
        cleaned = {k: (v if v != "" or k in ("instruction", "input") else None) for k, v in obj.items()}
        yield task_from_mapping(cleaned, n, f"row {n}")


def _parquet_rows(path: Path) -> Iterator[TaskRow]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BatchError("reading Parquet needs pyarrow: pip install 'brickwork[parquet]'") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 (pyarrow raises several types for a bad file)
        raise BatchError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    if "instruction" not in table.column_names:
        raise BatchError(f"{path}: no 'instruction' column (columns: {table.column_names})")
    for n, obj in enumerate(table.to_pylist(), start=1):
        yield task_from_mapping(obj, n, f"row {n}")


def read_tasks(path: Path, fmt: str | None = None) -> InputFile:
    """Every row of an input file; rows that cannot run are TaskRows with `error` set.

    Refused with a BatchError (one line): a missing file, an unknown format, a CSV that is not UTF-8 or has
    no instruction column, an unreadable Parquet file, duplicate ids, a file without rows.
    """
    path = Path(path)
    if not path.is_file():
        raise BatchError(f"{path}: no such file")
    fmt = detect_format(path, fmt)
    data = path.read_bytes()
    if fmt == "jsonl":
        rows = list(_jsonl_rows(data))
    elif fmt == "csv":
        rows = list(_csv_rows(data, path))
    else:
        rows = list(_parquet_rows(path))
    if not rows:
        raise BatchError(f"{path}: no rows")
    seen: dict[str, str] = {}
    duplicates = []
    for r in rows:
        if r.id in seen:
            duplicates.append(f"{r.id!r} ({seen[r.id]} and {r.where})")
        else:
            seen[r.id] = r.where
    if duplicates:
        more = f" and {len(duplicates) - 3} more" if len(duplicates) > 3 else ""
        raise BatchError(f"{path}: duplicate id {', '.join(duplicates[:3])}{more}; every id must be unique")
    return InputFile(path=path, format=fmt, rows=tuple(rows), sha256=hashlib.sha256(data).hexdigest())


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
            results = list(orc.run_batch([(r.instruction, r.input) for r in valid]))
        except Exception as e:  # noqa: BLE001 (isolated below)
            log.warning("a chunk of %d rows failed (%s); running each row alone", len(valid), e)
            results = []
            for r in valid:
                try:
                    results.append(orc.run_batch([(r.instruction, r.input)])[0])
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


def job_identity(inp: InputFile, model: Path | None, library: Path | None) -> dict:
    """What makes two runs the same job: the input bytes, the model weights, the library (bricks, base skills)."""
    from bricks.fingerprint import model_fingerprint
    from bricks.toyworld.paths import world_model_dir
    from orchestrator.factory import open_library
    from orchestrator.library_index import index_fingerprint

    model_dir = Path(model) if model is not None else world_model_dir()
    lib = open_library(library)
    ident = {"input_sha256": inp.sha256, "model_fingerprint": model_fingerprint(model_dir),
             "library_fingerprint": index_fingerprint(lib)}
    job = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return {"format": JOB_FORMAT, "job": job, **ident, "input": str(inp.path.resolve()), "model": str(model_dir),
            "library": str(lib.path)}


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
        self._open()

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
        if self.out.resolve() == self.input.path.resolve():
            raise BatchError(f"the output {str(self.out)!r} is the input file; choose another -o")
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
        elif self.out.exists() and self.out.stat().st_size > 0:
            raise BatchError(f"{self.out} exists and was not written by a brickwork batch job (no {side.name}); "
                             "choose another -o or delete it")
        else:
            self.out.parent.mkdir(parents=True, exist_ok=True)
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
        """Append the rows whose ids are not written yet, as complete lines, then flush and fsync."""
        fresh = [r for r in out_rows if r["id"] not in self.done]
        if not fresh:
            return 0
        blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in fresh).encode("utf-8")
        with open(self.out, "ab") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        self.done.update(r["id"] for r in fresh)
        return len(fresh)

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


def run_local(job: BatchJob, orc, progress: Progress | None = None) -> BatchSummary:
    """Run the job's pending chunks one after another on one Orchestrator, appending as each chunk ends."""
    skipped, total = len(job.done), job.remaining
    t0, written = time.perf_counter(), 0
    if progress:
        progress(0, total)
    for _, chunk in job.pending_chunks():
        written += job.write(run_chunk(orc, chunk))
        if progress:
            progress(written, total)
    return job.summary(written=written, skipped=skipped, seconds=time.perf_counter() - t0)
