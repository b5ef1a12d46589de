"""A paraphrase test set: phrasings and connectives that no brick or base skill was trained on.

Ten phrasings per skill and five connectives, written by hand. `paraphrase_rows` draws single-skill and
compound rows from them on test-split inputs, to measure routing and exact match on unseen wording.
"""

from __future__ import annotations

import random

from bricks.toyworld.skills import SKILLS
from bricks.toyworld.tasks import TaskRow, sample_compound, sample_single

__all__ = ["PARAPHRASES", "NEW_CONNECTIVES", "OUT_OF_SCOPE", "paraphrase_rows", "calibration_rows"]

PARAPHRASES: dict[str, tuple[str, ...]] = {
    "reverse": ("Flip the word around.", "Read it back to front.", "Turn the string backwards.",
                "Mirror the letter order.", "Write it from the last letter to the first.", "Invert the word.",
                "Give me the word backwards.", "Put the characters in reverse sequence.",
                "Spell the word from end to start.", "Backwards, please."),
    "uppercase": ("Shout it in caps.", "Turn every letter into a capital.", "Use all caps.",
                  "Make the word upper case.", "Change each letter to its capital form.", "Write it in block capitals.",
                  "Capitalise every character.", "Convert the word to caps.", "All capital letters, please.",
                  "Raise every letter to uppercase."),
    "sort": ("Alphabetize the letters.", "Rearrange the characters in alphabetical order.",
             "Put the letters in order from a to z.", "Sort the characters alphabetically.",
             "List the letters sorted.", "Order the characters from a to z.", "Arrange the letters alphabetically.",
             "Give the letters in dictionary order.", "Sort the word's letters.", "Alphabetical order, please."),
    "count": ("How long is the word?", "What is the length of the input?", "Tell me how many letters there are.",
              "Count the characters.", "Number of characters in the word?", "How many letters are in it?",
              "Measure the word's length.", "Report the letter count.", "Find the length of the string.",
              "What is the character count?"),
    "add": ("Add these together.", "What do the two numbers add up to?", "Give me the sum of the numbers.",
            "Total the two values.", "Calculate the sum.", "Plus the numbers together.", "Find the sum of both.",
            "What is the first number plus the second?", "Combine the numbers by addition.",
            "Work out the sum of the pair."),
    "caesar": ("Move each letter one step forward in the alphabet.", "Rotate every letter by one.",
               "Encrypt with a Caesar cipher of one.", "Advance each character to the next letter.",
               "Shift the letters up by one place.", "Use a rotation of one on every letter.",
               "Turn a into b, b into c, and so on.", "Bump every letter to its successor.",
               "Apply a shift-by-one cipher.", "Replace every letter by the one after it."),
    "double": ("Say every letter twice.", "Repeat each character.", "Write every letter two times in a row.",
               "Make each letter appear twice.", "Duplicate each letter.", "Double up the characters.",
               "Echo every letter once.", "Print each character twice.", "Every letter twice, please.",
               "Give each letter a twin."),
    "devowel": ("Take out the vowels.", "Delete a, e, i, o and u.", "Keep only the consonants.",
                "Get rid of every vowel.", "Erase the vowels from the word.", "Leave out all vowels.",
                "Cut the vowels.", "Eliminate vowels.", "Remove every a, e, i, o, u.", "Write the word without vowels."),
    "subtract": ("Take the second number away from the first.", "What is the first minus the second?",
                 "Find the difference of the two numbers.", "Subtract them.", "Compute the difference.",
                 "Minus the second number from the first.", "How much bigger is the first number?",
                 "Work out the first number less the second.", "Deduct the second value from the first.",
                 "Give the difference between the numbers."),
}

# (joiner after a step without its final period, whether the next step starts lowercase); none is in training
NEW_CONNECTIVES: tuple[tuple[str, bool], ...] = (
    ("; afterwards, ", True),
    (". Subsequently, ", True),
    (", and after that ", True),
    (" -> ", False),
    (". Once done, ", True),
)


def _join(parts: list[str], rng: random.Random) -> str:
    out = parts[0]
    for part in parts[1:]:
        joiner, lower = rng.choice(NEW_CONNECTIVES)
        out = out.rstrip(".?!") + joiner + ((part[0].lower() + part[1:]) if lower else part)
    return out


def paraphrase_rows(seed: int = 0, singles_per_skill: int = 40, compounds: int = 300) -> list[TaskRow]:
    """Single rows (every phrasing of every skill) and compound chains, all on test-split inputs."""
    for skill_id, phrasings in PARAPHRASES.items():
        clash = set(phrasings) & set(SKILLS[skill_id].phrasings)
        if clash:
            raise ValueError(f"paraphrases of {skill_id} repeat training phrasings: {sorted(clash)}")
    rng = random.Random(seed)
    rows: list[TaskRow] = []
    for skill_id, phrasings in PARAPHRASES.items():
        for i in range(singles_per_skill):
            row = sample_single(rng, skill_id, "test")
            rows.append(TaskRow(f"para-single-{skill_id}-{i:03d}", phrasings[i % len(phrasings)], row.input,
                                row.output, row.skills))
    for i in range(compounds):
        row = sample_compound(rng, "test")
        parts = [rng.choice(PARAPHRASES[s]) for s in row.skills]
        rows.append(TaskRow(f"para-compound-{i:03d}", _join(parts, rng), row.input, row.output, row.skills))
    return rows


# Requests no brick serves: a router should leave them to the base model (labeled with no skill).
OUT_OF_SCOPE: tuple[str, ...] = (
    "Translate the sentence into French.", "Summarize this paragraph.", "Write a haiku about autumn.",
    "What is the capital of Peru?", "Fix the grammar of the text.", "Explain how photosynthesis works.",
    "Tell me a joke.", "Convert the temperature to Fahrenheit.", "Classify the sentiment of the review.",
    "Generate a SQL query for the table.", "Name three prime numbers.", "Describe the picture.",
    "Write an email to my manager.", "Is this sentence sarcastic?", "List the planets of the solar system.",
    "Translate the word into German.", "Who wrote Hamlet?", "Draft a tweet about the launch.",
    "Find the square root of the number.", "Paraphrase the sentence politely.",
)


def calibration_rows(part: str) -> list[dict[str, object]]:
    """Labeled instructions for `brickwork calibrate`: part "fit" uses the first half of every paraphrase list
    and of OUT_OF_SCOPE, part "check" the second half (so thresholds are checked on phrasings they never saw)."""
    if part not in ("fit", "check"):
        raise ValueError(f"unknown calibration part {part!r}; expected 'fit' or 'check'")
    pick = (lambda xs: xs[: len(xs) // 2]) if part == "fit" else (lambda xs: xs[len(xs) // 2 :])
    rows: list[dict[str, object]] = [{"instruction": p, "skills": [skill]}
                                     for skill, phrasings in PARAPHRASES.items() for p in pick(phrasings)]
    rows += [{"instruction": p, "skills": []} for p in pick(OUT_OF_SCOPE)]
    return rows
