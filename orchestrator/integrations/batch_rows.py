"""The rows of a batch job: reading an input file (JSONL, CSV, Parquet) into TaskRows, and writing output rows.

Rows that cannot run (malformed JSON, no instruction, text that is not valid UTF-8, a bad value) become TaskRows
with `error` set, which the job writes as error rows; a file that cannot be read as a whole (a CSV with an
unterminated quote or bytes that are not UTF-8, an unreadable Parquet file, duplicate ids) is refused with a
one-line BatchError naming the file and the line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from bricks.errors import BrickworkError
from orchestrator.validation import InputError, check_text

__all__ = ["BatchError", "TaskRow", "InputFile", "FORMATS", "detect_format", "task_from_mapping", "read_tasks",
           "encode_rows"]

FORMATS = ("jsonl", "csv", "parquet")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_TEXT_FIELDS = ("instruction", "input", "output")


class BatchError(BrickworkError):
    """The job cannot start or go on (an unreadable input, an output of another job); one line naming the value."""


@dataclass(frozen=True)
class TaskRow:
    """One input row: a task to run, or, when `error` is set, a row that becomes an error row."""

    id: str
    instruction: str = ""
    input: str | None = ""  # None: the row has no input field (refused when the library requires inputs)
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


def _unicode_problem(value: str) -> str | None:
    """Why `value` is not valid Unicode text (a lone surrogate: an escaped byte that was not UTF-8), or None."""
    bad = next((i for i, ch in enumerate(value) if "\ud800" <= ch <= "\udfff"), None)
    if bad is None:
        return None
    code = ord(value[bad])
    what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"code point U+{code:04X}"
    return f"is not valid UTF-8 (bad {what} at character {bad})"


def _text_field(obj: Mapping, key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):  # a Parquet binary column
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"field {key} is not valid UTF-8 (bad byte 0x{value[e.start]:02x} at byte {e.start})"
                             ) from None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InputError(f"field {key} must be a string, got {type(value).__name__}")
    text = value if isinstance(value, str) else str(value)
    problem = _unicode_problem(text)
    if problem:
        raise InputError(f"field {key} {problem}")
    return text


def _row_id(raw_id: object, number: int) -> str:
    """The row's id as text (its number in the file when missing); InputError for one that cannot be an id."""
    if raw_id is None or raw_id == "" or raw_id == b"":
        return str(number)
    if isinstance(raw_id, (bytes, bytearray)):
        try:
            raw_id = bytes(raw_id).decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"id is not valid UTF-8: {bytes(raw_id)!r}") from None
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        raise InputError(f"id must be a string or an integer, got {raw_id!r}")
    row_id = str(raw_id)
    problem = _unicode_problem(row_id)
    if problem:
        raise InputError(f"id {ascii(row_id)} {problem}")
    return row_id


def task_from_mapping(obj: object, number: int, where: str) -> TaskRow:
    """A TaskRow from one parsed row; a row that cannot run becomes a TaskRow with `error` set.

    A missing or empty `id` is the row's number in the file (1-based line for JSONL, data row for CSV/Parquet).
    A text field that is not valid UTF-8 makes an error row naming the row's id and the field.
    """
    if not isinstance(obj, Mapping):
        return TaskRow(id=f"<{where}>", error=f"{where}: expected an object, got {type(obj).__name__}", where=where)
    try:
        row_id = _row_id(obj.get("id"), number)
    except InputError as e:
        return TaskRow(id=f"<{where}>", error=f"{where}: {e}", where=where)
    try:
        fields = {key: _text_field(obj, key) for key in _TEXT_FIELDS}
        if fields["instruction"] is None:
            raise InputError("missing field instruction")
        instruction = check_text(fields["instruction"], "instruction")
        text = None if fields["input"] is None else check_text(fields["input"], "input", allow_empty=True)
    except InputError as e:
        return TaskRow(id=row_id, error=f"{where} (id {row_id!r}): {e}", where=where)
    return TaskRow(id=row_id, instruction=instruction, input=text, gold=fields["output"], where=where)


def _jsonl_rows(data: bytes) -> Iterator[TaskRow]:
    for n, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        where = f"line {n}"
        # bytes that are not UTF-8 become lone surrogates, so the row keeps its id and the error names the field
        line = raw.decode("utf-8", "surrogateescape")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield TaskRow(id=f"<{where}>", error=f"{where}: malformed JSON ({e.msg} at column {e.colno})",
                          where=where)
            continue
        yield task_from_mapping(obj, n, where)


def _quote_start(lines: list[str], first: int, last: int) -> int:
    """The 1-based line of the last opening quote of a field at or after line `first` and up to line `last`."""
    opened, in_quote, at_field_start = first, False, True
    for n in range(first, min(last, len(lines)) + 1):
        line, i = lines[n - 1], 0
        while i < len(line):
            ch = line[i]
            if in_quote:
                if ch == '"' and line[i + 1:i + 2] == '"':
                    i += 1
                elif ch == '"':
                    in_quote = False
            elif ch == '"' and at_field_start:
                in_quote, opened = True, n
            at_field_start = not in_quote and ch in ",\r\n"
            i += 1
    return opened


def _csv_records(text: str, path: Path) -> Iterator[tuple[int, dict]]:
    """(data row number, cells) of each CSV record; refuses a quote that is never closed, naming its line."""
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    start = 1
    try:
        if reader.fieldnames is None or "instruction" not in reader.fieldnames:
            raise BatchError(f"{path}: no 'instruction' column (columns: {reader.fieldnames or []})")
        n, start = 0, reader.reader.line_num + 1
        for obj in reader:
            n += 1
            yield n, obj
            start = reader.reader.line_num + 1
    except csv.Error as e:
        lines = text.splitlines(keepends=True)
        at = reader.reader.line_num  # the line where the reader gave up
        opened = _quote_start(lines, start, at)
        eof = "end of data" in str(e)
        what = "runs to the end of the file" if eof else f"is not closed where expected ({e} on line {at})"
        raise BatchError(f"{path}:{opened}: a quoted field that starts on line {opened} {what}; "
                         "close the quote (a quote inside a quoted field is written twice: \"\")") from None


def _csv_rows(data: bytes, path: Path) -> Iterator[TaskRow]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise BatchError(f"{path}:{line}: not UTF-8 (bad byte 0x{data[e.start]:02x} on line {line}); "
                         "save it as UTF-8") from None
    for n, obj in _csv_records(text, path):
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

    Refused with a BatchError (one line): a missing file, an unknown format, a CSV that is not UTF-8, has an
    unterminated quote or no instruction column, an unreadable Parquet file, duplicate ids, a file without rows.
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


def encode_rows(rows: Iterable[dict]) -> bytes:
    """Output rows as UTF-8 JSON lines; a row holding text that cannot be UTF-8 is written with JSON escapes."""
    lines = []
    for row in rows:
        line = json.dumps(row, ensure_ascii=False)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (e.g. in an error message): escaped, never a crash
            line = json.dumps(row)
        lines.append(line + "\n")
    return "".join(lines).encode("utf-8")
