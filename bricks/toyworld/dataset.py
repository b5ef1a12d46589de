"""Write the toy world's JSONL splits: single-skill and compound rows for train / validation / test."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from bricks.atomic import atomic_write_text
from bricks.toyworld.skills import LORA_SKILLS, SKILLS
from bricks.toyworld.tasks import SPLITS, Split, TaskRow, sample_compound, sample_single

__all__ = ["DatasetSizes", "write_splits", "split_path"]

# skills whose brick later sees 9-16 letter words in compound chains (after `double`)
_LONG_INPUT_SKILLS = frozenset({"caesar", "devowel"})


@dataclass(frozen=True)
class DatasetSizes:
    """Rows per skill (single) and per split (compound)."""

    single_train_lora: int = 4000
    single_train_emergent: int = 500
    single_validation: int = 100
    single_test: int = 200
    compound_train: int = 1000
    compound_validation: int = 200
    compound_test: int = 500

    @classmethod
    def quick(cls) -> "DatasetSizes":
        return cls(200, 20, 10, 20, 20, 10, 20)


def split_path(data_dir: Path, kind: str, split: Split) -> Path:
    """Where the `kind` ("single" or "compound") rows of `split` live."""
    return Path(data_dir) / f"{kind}_{split}.jsonl"


def _single_rows(rng: random.Random, split: Split, sizes: DatasetSizes) -> list[TaskRow]:
    rows = []
    for skill_id, skill in SKILLS.items():
        if split == "train":
            n = sizes.single_train_lora if skill_id in LORA_SKILLS else sizes.single_train_emergent
        else:
            n = sizes.single_validation if split == "validation" else sizes.single_test
        long_fraction = 0.2 if split == "train" and skill_id in _LONG_INPUT_SKILLS else 0.0
        for i in range(n):
            row = sample_single(rng, skill_id, split, long_fraction=long_fraction)
            rows.append(TaskRow(f"{split}-{skill_id}-{i:05d}", row.instruction, row.input, row.output, row.skills))
    return rows


def _compound_rows(rng: random.Random, split: Split, sizes: DatasetSizes) -> list[TaskRow]:
    n = {"train": sizes.compound_train, "validation": sizes.compound_validation, "test": sizes.compound_test}[split]
    rows = []
    for i in range(n):
        row = sample_compound(rng, split)
        rows.append(TaskRow(f"{split}-compound-{i:05d}", row.instruction, row.input, row.output, row.skills))
    return rows


def _write_jsonl(path: Path, rows: list[TaskRow]) -> None:
    atomic_write_text(path, "".join(json.dumps(row.to_json()) + "\n" for row in rows))


def write_splits(data_dir: Path, *, seed: int = 0, sizes: DatasetSizes = DatasetSizes()) -> dict[str, int]:
    """Generate every split from `seed` and write it; returns rows written per file name."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split in SPLITS:
        for kind, make in (("single", _single_rows), ("compound", _compound_rows)):
            rows = make(random.Random(f"{seed}:{kind}:{split}"), split, sizes)
            path = split_path(data_dir, kind, split)
            _write_jsonl(path, rows)
            written[path.name] = len(rows)
    return written
