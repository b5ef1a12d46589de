"""The toy world's nine skills: how inputs are drawn, what the right output is, and how they are phrased."""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Skill", "SKILLS", "EMERGENT_SKILLS", "LORA_SKILLS", "get_skill", "random_word", "random_pair"]

VOWELS = frozenset("aeiou")


def random_word(rng: random.Random, min_len: int = 3, max_len: int = 8) -> str:
    """A word of random lowercase letters (not a dictionary word)."""
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(min_len, max_len)))


def random_pair(rng: random.Random) -> str:
    """Two numbers 0..99, space-separated."""
    return f"{rng.randint(0, 99)} {rng.randint(0, 99)}"


def _caesar(word: str) -> str:
    return "".join(chr((ord(c) - 97 + 1) % 26 + 97) for c in word)


def _add(text: str) -> str:
    a, b = (int(x) for x in text.split())
    return str(a + b)


def _subtract(text: str) -> str:
    a, b = (int(x) for x in text.split())
    return str(a - b)


def _is_word(text: str) -> bool:
    return bool(text) and all(c in string.ascii_lowercase for c in text)


def _is_pair(text: str) -> bool:
    parts = text.split(" ")
    return len(parts) == 2 and all(p.isdigit() and 0 <= int(p) <= 99 and str(int(p)) == p for p in parts)


def _is_ordered_pair(text: str) -> bool:
    if not _is_pair(text):
        return False
    a, b = (int(x) for x in text.split())
    return a >= b


def _sample_ordered_pair(rng: random.Random) -> str:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"{max(a, b)} {min(a, b)}"


def _has_consonant(text: str) -> bool:
    return _is_word(text) and any(c not in VOWELS for c in text)


def _sample_devowel_word(rng: random.Random) -> str:
    while True:
        word = random_word(rng)
        if _has_consonant(word):
            return word


@dataclass(frozen=True)
class Skill:
    """One skill: its id, its training phrasings, and the function it computes."""

    id: str
    phrasings: tuple[str, ...]
    emergent: bool  # True: taught in base pre-training; False: a LoRA brick teaches it
    apply: Callable[[str], str]
    accepts: Callable[[str], bool]
    sample: Callable[[random.Random], str]
    description: str


SKILLS: dict[str, Skill] = {
    s.id: s
    for s in [
        Skill(
            "reverse",
            ("Reverse the text.", "Write the input backwards.", "Reverse the order of the letters.", "Spell it in reverse."),
            True, lambda w: w[::-1], _is_word, random_word,
            "Reverses a word: writes its letters in the opposite order.",
        ),
        Skill(
            "uppercase",
            ("Convert to uppercase.", "Write the input in capital letters.", "Make every letter uppercase.",
             "Capitalize all letters."),
            True, str.upper, _is_word, random_word,
            "Converts a word to uppercase capital letters.",
        ),
        Skill(
            "sort",
            ("Sort the letters.", "Put the letters in alphabetical order.", "Arrange the characters from a to z.",
             "Order the letters alphabetically."),
            True, lambda w: "".join(sorted(w)), _is_word, random_word,
            "Sorts the letters of a word in alphabetical order.",
        ),
        Skill(
            "count",
            ("Count the letters.", "How many characters does the input have?", "Give the length of the word.",
             "Return the number of letters."),
            True, lambda w: str(len(w)), _is_word, random_word,
            "Counts the letters of a word and returns the length as digits.",
        ),
        Skill(
            "add",
            ("Add the two numbers.", "What is the sum?", "Compute the total of both numbers.", "Sum the numbers."),
            True, _add, _is_pair, random_pair,
            "Adds two numbers and returns their sum.",
        ),
        Skill(
            "caesar",
            ("Shift every letter forward by one.", "Apply a Caesar shift of one.",
             "Replace each letter with the next letter of the alphabet.", "Encode with a shift of 1."),
            False, _caesar, _is_word, random_word,
            "Caesar cipher: shifts every letter one place forward in the alphabet, z wraps to a.",
        ),
        Skill(
            "double",
            ("Double every letter.", "Write each character twice.", "Repeat each letter two times.",
             "Duplicate every character."),
            False, lambda w: "".join(c + c for c in w), _is_word, random_word,
            "Doubles a word: writes each of its letters twice.",
        ),
        Skill(
            "devowel",
            ("Remove the vowels.", "Delete every vowel.", "Drop all vowels from the word.", "Strip out the vowels."),
            False, lambda w: "".join(c for c in w if c not in VOWELS), _has_consonant, _sample_devowel_word,
            "Removes the vowels a, e, i, o, u from a word.",
        ),
        Skill(
            "subtract",
            ("Subtract the second number from the first.", "What is the difference?",
             "Compute the first number minus the second.", "Take away the second number from the first."),
            False, _subtract, _is_ordered_pair, _sample_ordered_pair,
            "Subtracts the second number from the first and returns the difference.",
        ),
    ]
}

EMERGENT_SKILLS: tuple[str, ...] = tuple(s for s, v in SKILLS.items() if v.emergent)
LORA_SKILLS: tuple[str, ...] = tuple(s for s, v in SKILLS.items() if not v.emergent)


def get_skill(skill_id: str) -> Skill:
    """The skill named `skill_id`; a ValueError naming it and the known ids otherwise."""
    try:
        return SKILLS[skill_id]
    except KeyError:
        raise ValueError(f"unknown skill id {skill_id!r}; expected one of {', '.join(SKILLS)}") from None
