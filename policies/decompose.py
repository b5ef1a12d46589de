"""Decomposition policies: split a compound instruction into the single-step instructions it chains."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from bricks.errors import BrickworkError

__all__ = ["Decomposer", "SingleStep", "RuleDecomposer", "DecompositionError", "normalize_step"]


class DecompositionError(BrickworkError):
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


_NUMBER = r"(?:\d+|one|two|three|four|five|six|seven|eight|nine|ten)"  # "Step 2:", "Step two:"
_LIST_ITEM = re.compile(rf"^\s*(?:\d+[.):]|[a-z][.)]|[-*\u2022]|step\s+{_NUMBER}\s*[:.)-])\s+(.*\S)\s*$", re.IGNORECASE)
# "1) sort 2) reverse", "(1) sort (2) reverse", "Step 1: sort. Step two: reverse" written on one line
_INLINE_ITEM = re.compile(rf"(?:^|\s)(?:\(?\d+\)|\d+[.:]|step\s+{_NUMBER}\s*[:.)-])\s+", re.IGNORECASE)
_SENTENCE = re.compile(r"(?<=[.?!])\s+(?=[A-Za-z])")
_THEN = r"(?:then|next|afterwards|afterward|after\s+that|after\s+this|subsequently|finally|lastly|last|and\s+then" \
        r"|and\s+finally|and\s+lastly|and\s+afterwards|and\s+after\s+that|after\s+which|once\s+done" \
        r"|once\s+that\s+is\s+done|when\s+done|when\s+that\s+is\s+done|followed\s+by|and\s+next" \
        r"|following\s+that|following\s+this|and\s+following\s+that|thereafter|and\s+thereafter)"
_CONNECTIVE = re.compile(
    rf"\s*(?:[,;:]\s*{_THEN}\b,?|\b(?:and\s+then|and\s+finally|and\s+lastly|and\s+afterwards|and\s+after\s+that"
    r"|and\s+next)\b,?|;|\s+(?:->|=>|\u2192)|\s+then\b,?)\s+",
    re.IGNORECASE,
)
# Connective phrases that open a step ("Following that, take out ...", "Step two: take out ..."): stripped, so
# the router sees the step's own words. Those of the second group may also open a real instruction ("At the
# end of the word ..."), so they are stripped only before a comma or colon.
_LEADING = re.compile(
    r"^(?:(?:first(?:ly)?|second(?:ly)?|third(?:ly)?|to\s+start|to\s+begin|start\s+by|begin\s+by|then|next"
    r"|after\s+that|after\s+this|afterwards?|subsequently|finally|lastly|last|and|once\s+done"
    r"|once\s+that\s+is\s+done|when\s+done|when\s+that\s+is\s+done|now|following\s+that|following\s+this"
    r"|thereafter|after\s+which|once\s+finished|when\s+finished|having\s+done\s+that|with\s+that\s+done"
    r"|as\s+(?:a|the)\s+(?:next|final|last)\s+step|(?:the\s+)?(?:first|second|third|next|last|final)\s+step"
    r"(?:\s+is\s+to)?)(?:\s*[,:]\s*|\s+)"
    rf"|(?:step\s+{_NUMBER}|in\s+the\s+end|at\s+the\s+end|to\s+finish|to\s+finish\s+up|then)\s*[,:.)-]\s*)",
    re.IGNORECASE,
)


def _pieces(instruction: str) -> list[str]:
    """Split off list items: numbered inline ("1) a 2) b", "Step 1: a. Step 2: b") or one per line."""
    lines = [ln for ln in instruction.splitlines() if ln.strip()]
    text = " ".join(ln.strip() for ln in lines)
    markers = list(_INLINE_ITEM.finditer(text))
    if len(markers) >= 2 and markers[0].start() == 0:
        return [p for p in _INLINE_ITEM.split(text) if p.strip(" .,;:")]
    items = [m.group(1) for ln in lines if (m := _LIST_ITEM.match(ln))]
    if items and len(items) == len(lines):
        return items
    return [text]


@dataclass(frozen=True)
class RuleDecomposer:
    """Splits on list items, sentences and connectives (", then", "and then", "; next", "After that,", "->", ...).

    Each piece is normalised with `normalize_step`; a chain longer than `max_steps` is refused.
    """

    max_steps: int = 8
    name: str = "rules"

    def split(self, instruction: str) -> list[str]:
        steps: list[str] = []
        for piece in _pieces(instruction):
            for sentence in _SENTENCE.split(piece):
                for part in _CONNECTIVE.split(sentence):
                    while (stripped := _LEADING.sub("", part.strip())) != part.strip():
                        part = stripped
                    if part.strip(" .,;:?!"):
                        steps.append(normalize_step(part))
        if not steps:
            raise DecompositionError(f"instruction {instruction[:80]!r} has no step")
        if len(steps) > self.max_steps:
            raise DecompositionError(f"instruction decomposes into {len(steps)} steps, more than max_steps={self.max_steps}")
        return steps
