"""Task rows for the toy world: single-skill and compound examples, assigned to splits by their input.

The split of an example is a pure function of its input (a CRC32 bucket), so no test input can ever be
drawn for training, however many fresh examples the trainers sample.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Literal

from bricks.toyworld.skills import SKILLS, get_skill, random_word

__all__ = [
    "Split",
    "SPLITS",
    "CONNECTIVES",
    "TaskRow",
    "split_of",
    "sample_single",
    "sample_compound",
    "join_instructions",
    "sample_chain_steps",
]

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")

# (joiner placed after a step without its final period, whether the next step starts lowercase)
CONNECTIVES: tuple[tuple[str, bool], ...] = (
    (", then ", True),
    (" and then ", True),
    (". After that, ", True),
    ("; next, ", True),
    (". Then ", True),
)
FINAL_CONNECTIVES: tuple[tuple[str, bool], ...] = ((". Finally, ", True), (", and finally ", True))

CHAIN_BODY = ("reverse", "sort", "caesar", "double", "devowel")
CHAIN_ENDS = ("uppercase", "count")


def split_of(text: str) -> Split:
    """The split an input belongs to: 80 % train, 10 % validation, 10 % test, by CRC32."""
    bucket = zlib.crc32(text.encode()) % 10
    return "train" if bucket < 8 else ("validation" if bucket == 8 else "test")


@dataclass(frozen=True)
class TaskRow:
    """One example: an instruction, its input, the gold output and the ordered skills it takes."""

    id: str
    instruction: str
    input: str
    output: str
    skills: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "instruction": self.instruction, "input": self.input, "output": self.output,
                "skills": list(self.skills)}


def _sample_input(rng: random.Random, skill_id: str, split: Split, long_fraction: float) -> str:
    skill = get_skill(skill_id)
    while True:
        if long_fraction and skill.sample is random_word and rng.random() < long_fraction:
            text = random_word(rng, 9, 16)
        else:
            text = skill.sample(rng)
        if skill.accepts(text) and split_of(text) == split:
            return text


def sample_single(rng: random.Random, skill_id: str, split: Split, *, row_id: str = "",
                  long_fraction: float = 0.0) -> TaskRow:
    """A single-skill example in `split`, phrased with one of the skill's training phrasings.

    `long_fraction` of word inputs are 9-16 letters instead of 3-8 (for skills that later steps of a
    compound task feed with longer words, e.g. after `double`).
    """
    skill = get_skill(skill_id)
    text = _sample_input(rng, skill_id, split, long_fraction)
    return TaskRow(row_id, rng.choice(skill.phrasings), text, skill.apply(text), (skill_id,))


def join_instructions(parts: list[str], rng: random.Random) -> str:
    """Join single-step instructions into one compound instruction with random connectives."""
    out = parts[0]
    for i, part in enumerate(parts[1:], start=1):
        table = FINAL_CONNECTIVES if i == len(parts) - 1 and len(parts) > 2 else CONNECTIVES
        joiner, lower = rng.choice(table)
        out = out.rstrip(".?!") + joiner + ((part[0].lower() + part[1:]) if lower else part)
    return out


def _sample_chain(rng: random.Random) -> tuple[str, ...]:
    n = rng.choice((2, 3))
    with_end = rng.random() < 0.5
    body_len = n - 1 if with_end else n
    chain: list[str] = []
    while len(chain) < body_len:
        s = rng.choice(CHAIN_BODY)
        if (chain and chain[-1] == s) or (s == "double" and "double" in chain):
            continue
        chain.append(s)
    if with_end:
        chain.append(rng.choice(CHAIN_ENDS))
    return tuple(chain)


def sample_compound(rng: random.Random, split: Split, *, row_id: str = "") -> TaskRow:
    """A 2- or 3-step chain over one word, each step applied to the previous step's output."""
    while True:
        chain = _sample_chain(rng)
        text = _sample_input(rng, chain[0], split, 0.0)
        value, ok = text, True
        for s in chain:
            if not SKILLS[s].accepts(value):
                ok = False
                break
            value = SKILLS[s].apply(value)
        if ok:
            parts = [rng.choice(SKILLS[s].phrasings) for s in chain]
            return TaskRow(row_id, join_instructions(parts, rng), text, value, chain)


def sample_chain_steps(rng: random.Random, skill_id: str, n: int, split: Split = "train") -> list[TaskRow]:
    """`n` single-skill rows whose inputs are what earlier steps of compound chains hand to `skill_id`.

    In a chain, a step receives the previous step's output (a doubled word, a word without vowels, one or
    two letters), not a fresh 3-8 letter word. Bricks trained on these rows as well as on fresh inputs see
    the inputs they will meet in a plan. The chains start from `split` inputs only, so no test input leaks.
    """
    skill = get_skill(skill_id)
    if skill_id not in CHAIN_BODY + CHAIN_ENDS:
        return []
    rows: list[TaskRow] = []
    for _ in range(1000 * max(n, 1)):
        if len(rows) >= n:
            break
        chain = sample_compound(rng, split)
        value = chain.input
        for i, s in enumerate(chain.skills):
            if s == skill_id and i > 0 and SKILLS[s].accepts(value):
                rows.append(TaskRow(f"chain-{skill_id}-{len(rows):05d}", rng.choice(skill.phrasings), value,
                                    skill.apply(value), (skill_id,)))
                break
            value = SKILLS[s].apply(value)
    return rows
