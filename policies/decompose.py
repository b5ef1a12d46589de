"""Decomposition policies: split a compound instruction into the single-step instructions it chains."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Decomposer", "SingleStep", "RuleDecomposer", "DecompositionError", "normalize_step"]


class DecompositionError(ValueError):
    """An instruction cannot be decomposed within the configured limits."""


class Decomposer(Protocol):
    """Splits an instruction into an ordered chain of step instructions."""

    name: str

    def split(self, instruction: str) -> list[str]: ...


def normalize_step(text: str) -> str:
    """Sentence case and final punctuation, the form single instructions are usually written in."""
    text = text.strip().strip(",;:").strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".?!" else text + "."


@dataclass(frozen=True)
class SingleStep:
    """No decomposition: the whole instruction is one step."""

    name: str = "single"

    def split(self, instruction: str) -> list[str]:
        return [normalize_step(instruction)]


_LIST_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])\s+(.*\S)\s*$")
_SENTENCE = re.compile(r"(?<=[.?!])\s+(?=[A-Za-z])")
_CONNECTIVE = re.compile(
    r"\s*(?:,\s*and\s+then|,\s*and\s+finally|\band\s+then|\band\s+finally|,\s*then|;\s*then|;\s*next,?|;\s*after\s+that,?"
    r"|;\s*finally,?|;)\s+",
    re.IGNORECASE,
)
_LEADING = re.compile(r"^(?:first(?:ly)?|then|next|after\s+that|afterwards|finally|lastly|and)\s*,?\s+", re.IGNORECASE)


@dataclass(frozen=True)
class RuleDecomposer:
    """Splits on list items, sentences and connectives (", then", "and then", "; next", "After that,", ...).

    Each piece is normalised with `normalize_step`; a chain longer than `max_steps` is refused.
    """

    max_steps: int = 8
    name: str = "rules"

    def split(self, instruction: str) -> list[str]:
        lines = [ln for ln in instruction.splitlines() if ln.strip()]
        items = [m.group(1) for ln in lines if (m := _LIST_ITEM.match(ln))]
        pieces = items if items and len(items) == len(lines) else [" ".join(ln.strip() for ln in lines)]
        steps: list[str] = []
        for piece in pieces:
            for sentence in _SENTENCE.split(piece):
                for part in _CONNECTIVE.split(sentence):
                    part = _LEADING.sub("", part.strip())
                    if part.strip(" .,;:?!"):
                        steps.append(normalize_step(part))
        if not steps:
            raise DecompositionError(f"instruction {instruction[:80]!r} has no step")
        if len(steps) > self.max_steps:
            raise DecompositionError(f"instruction decomposes into {len(steps)} steps, more than max_steps={self.max_steps}")
        return steps
