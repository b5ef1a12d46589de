"""Exact-match evaluation of a causal LM (optionally with a LoRA adapter) on instruction rows."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bricks.generation import generate_texts
from bricks.prompt import DEFAULT_TEMPLATE, PromptTemplate

__all__ = ["SkillScore", "exact_match_by_skill", "score_outputs"]


@dataclass(frozen=True)
class SkillScore:
    """Exact match of one skill: `correct` of `total` rows."""

    skill: str
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def exact_match_by_skill(model, tokenizer, rows: Iterable[Mapping], *, template: PromptTemplate = DEFAULT_TEMPLATE,
                         max_new_tokens: int = 24, batch_size: int = 256) -> dict[str, SkillScore]:
    """Greedy-decode every row's prompt and compare with its `output`, grouped by `skills` (joined by '+')."""
    rows = list(rows)
    outputs = generate_texts(model, tokenizer, [template.render(r["instruction"], r.get("input", "")) for r in rows],
                             max_new_tokens=max_new_tokens, batch_size=batch_size)
    return score_outputs(rows, outputs)


def score_outputs(rows: Sequence[Mapping], outputs: Sequence[str]) -> dict[str, SkillScore]:
    """Exact match of each output (stripped) against its row's `output`, grouped by `skills` joined by '+'."""
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row, out in zip(rows, outputs):
        key = "+".join(row["skills"])
        hits[key][0] += int(out.strip() == row["output"])
        hits[key][1] += 1
    return {k: SkillScore(k, c, n) for k, (c, n) in sorted(hits.items())}
