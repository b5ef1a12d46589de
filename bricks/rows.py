"""Instruction rows read from JSONL: the input of brick training and evaluation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bricks.errors import BrickworkError

__all__ = ["InstructionRow", "RowError", "read_rows"]


class RowError(BrickworkError):
    """A JSONL file or one of its rows is not usable; the message names the file and line."""


@dataclass(frozen=True)
class InstructionRow:
    """One example: instruction, input, gold output, and optionally the ordered skills it takes."""

    id: str
    instruction: str
    input: str
    output: str
    skills: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "instruction": self.instruction, "input": self.input, "output": self.output,
                "skills": list(self.skills)}


def read_rows(path: Path, *, require_output: bool = True) -> list[InstructionRow]:
    """Read and validate every row; the first bad row raises a RowError naming `path:line` and the field."""
    path = Path(path)
    if not path.is_file():
        raise RowError(f"{path}: no such file")
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise RowError(f"{path}: not UTF-8 (byte {e.start})") from None
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise RowError(f"{path}:{n}: malformed JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise RowError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        needed = ["instruction"] + (["output"] if require_output else [])
        missing = [k for k in needed if not isinstance(obj.get(k), str) or (k == "instruction" and not obj[k].strip())]
        if missing:
            raise RowError(f"{path}:{n}: missing or empty field(s) {', '.join(missing)} (expected strings)")
        skills = obj.get("skills") or []
        if not isinstance(skills, list) or not all(isinstance(s, str) for s in skills):
            raise RowError(f"{path}:{n}: field skills must be a list of strings, got {skills!r}")
        rows.append(InstructionRow(str(obj.get("id", n)), obj["instruction"], str(obj.get("input", "")),
                                   obj.get("output", ""), tuple(skills)))
    if not rows:
        raise RowError(f"{path}: no rows")
    return rows
