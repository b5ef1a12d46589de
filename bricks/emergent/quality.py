"""The quality gate of emergent bricks: how many of the base model's right answers a keep-only brick keeps.

A skill's brick is run alone (`mask_mode="keep"`, compact FFN) on held-out rows of the skill, and compared with
the base model on the same rows. Its *retention* is the share of the rows the base model answers right that the
brick still answers right (so it never exceeds 1, and a brick cannot buy retention with answers the base gets
wrong). The figures go into the brick's manifest metrics under the names below; the planner routes a base
skill's step to its emergent brick only when the recorded retention reaches its `emergent_min_retention`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bricks.errors import ConfigError

__all__ = ["RETENTION_METRIC", "EXACT_MATCH_METRIC", "BASE_EXACT_MATCH_METRIC", "ROWS_METRIC",
           "DEFAULT_MIN_RETENTION", "DEFAULT_MIN_SUPPORT", "Retention", "masked_outputs", "measure_retention"]

RETENTION_METRIC = "retention_validation"
EXACT_MATCH_METRIC = "exact_match_validation"
BASE_EXACT_MATCH_METRIC = "base_exact_match_validation"
ROWS_METRIC = "rows_validation"
DEFAULT_MIN_RETENTION = 0.95  # `bricks discover` adds no brick that keeps fewer of the base's right answers
DEFAULT_MIN_SUPPORT = 20  # ... nor one measured on fewer rows that the base model answers right


@dataclass(frozen=True)
class Retention:
    """One brick on held-out rows: how many the base and the brick answer right, and how many of the base's
    right answers the brick keeps."""

    rows: int
    base_correct: int
    correct: int
    kept: int

    @property
    def retention(self) -> float:
        """Share of the base model's right answers the brick keeps right (0 when the base gets none right)."""
        return self.kept / self.base_correct if self.base_correct else 0.0

    @property
    def exact_match(self) -> float:
        return self.correct / self.rows if self.rows else 0.0

    @property
    def base_exact_match(self) -> float:
        return self.base_correct / self.rows if self.rows else 0.0

    def metrics(self) -> dict[str, float]:
        """The manifest metrics of the measurement (rounded to 4 digits; retention never rounded up)."""
        down = math.floor(round(self.retention * 10_000, 6)) / 10_000  # 0.98989.. -> 0.9898, 0.29 stays 0.29
        return {RETENTION_METRIC: down, EXACT_MATCH_METRIC: round(self.exact_match, 4),
                BASE_EXACT_MATCH_METRIC: round(self.base_exact_match, 4), ROWS_METRIC: float(self.rows)}


def masked_outputs(model, tokenizer, rows: Sequence[Mapping], masks: Mapping[int, object] | None = None, *,
                   mode: str = "keep", max_new_tokens: int = 24, batch_size: int = 256, apply=None) -> list[str]:
    """Greedy answers to rows (`instruction`, `input`) in the default prompt template, with only the masked
    neurons (`masks=None`: the whole model). `apply(model, masks, mode)` is the context that runs the mask
    (default: compact FFN; MoE expert bricks pass their router masking)."""
    from bricks.emergent.masking import compact_ffn
    from bricks.generation import generate_texts
    from bricks.prompt import DEFAULT_TEMPLATE

    apply = apply or compact_ffn
    prompts = [DEFAULT_TEMPLATE.render(r["instruction"], r.get("input", "") or "") for r in rows]
    with apply(model, masks, mode) if masks is not None else contextlib.nullcontext():
        return generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)


def measure_retention(rows: Sequence[Mapping], base: Sequence[str], masked: Sequence[str]) -> Retention:
    """Compare the base model's and a brick's answers (`base`, `masked`, one per row) with the rows' `output`."""
    if not len(rows) == len(base) == len(masked):
        raise ConfigError(f"{len(rows)} rows but {len(base)} base and {len(masked)} brick answers")
    right_base = [b.strip() == r["output"] for r, b in zip(rows, base)]
    right = [m.strip() == r["output"] for r, m in zip(rows, masked)]
    return Retention(len(rows), sum(right_base), sum(right), sum(a and b for a, b in zip(right_base, right)))
