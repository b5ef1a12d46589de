"""A paraphrase test set: phrasings and connectives that no brick or base skill was trained on.

Ten phrasings per skill and five connectives, written by hand. `paraphrase_rows` draws single-skill and
compound rows from them on test-split inputs, to measure routing and exact match on unseen wording.
"""

from __future__ import annotations

import random

from bricks.toyworld.skills import SKILLS
from bricks.toyworld.tasks import TaskRow, sample_compound, sample_single

__all__ = ["PARAPHRASES", "NEW_CONNECTIVES", "OUT_OF_SCOPE", "paraphrase_rows", "calibration_rows",
           "HARD_PARAPHRASES", "HARD_CATEGORIES", "hard_paraphrase_rows"]

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


# A hard paraphrase split, written to be hard and never used for training, calibration or choosing any setting:
# per skill three phrasings of each kind: synonyms (rare words for the same act), jargon (programmer's or
# linguist's terms), indirect (the result described, not the act), misspelt (typos of training-like phrasings).
HARD_CATEGORIES: tuple[str, ...] = ("synonym", "jargon", "indirect", "misspelt")
HARD_PARAPHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "reverse": {
        "synonym": ("Invert the sequence of characters.", "Transpose the string end for end.",
                    "Backtrack through the letters and write them."),
        "jargon": ("Apply str[::-1].", "Emit the mirror image of the token.", "Run a LIFO pass over the characters."),
        "indirect": ("I want to read this word as if looking at it in a mirror.",
                     "Start from the tail and work to the head.",
                     "How would this word look spelled by someone reading right to left?"),
        "misspelt": ("Revrese the txet.", "Wirte the inpt bakwards.", "Spel it in revers."),
    },
    "uppercase": {
        "synonym": ("Put it in majuscule.", "Render each character as a capital.",
                    "Enlarge every letter to its big form."),
        "jargon": ("Apply toUpperCase().", "Map the string through str.upper.", "Set the caps-lock transform on it."),
        "indirect": ("Make it look like someone is yelling.", "Write it the way a headline banner would.",
                     "No small letters allowed in the answer."),
        "misspelt": ("Convrt to uppercsae.", "Make evry leter upercase.", "Capitalyze all leters."),
    },
    "sort": {
        "synonym": ("Sequence the characters lexically.", "Collate the letters.",
                    "Rank the letters from first to last in the alphabet."),
        "jargon": ("Return the sorted characters joined.", "Apply an ascending lexicographic sort to the chars.",
                   "Run quicksort on the characters."),
        "indirect": ("Which order would the letters be in if a dictionary listed them?",
                     "Line the letters up like they appear in the ABC song.", "Put a before b before c, for these."),
        "misspelt": ("Sotr the leters.", "Put the letters in alfabetical ordr.", "Ordr the leters alphabeticaly."),
    },
    "count": {
        "synonym": ("Tally the characters.", "Determine how many symbols the word contains.",
                    "Enumerate the letters and give the total."),
        "jargon": ("Return len(s).", "Output the string's cardinality.", "Compute strlen of the input."),
        "indirect": ("How big is this word, in letters?", "If each letter cost one coin, how many coins would I pay?",
                     "I need the size of this string."),
        "misspelt": ("Cuont the leters.", "How many charactres does the inpt have?", "Giv the lenght of the wrod."),
    },
    "add": {
        "synonym": ("Aggregate the two figures.", "Tot up the pair.", "Accumulate both values into one."),
        "jargon": ("Return a + b.", "Apply the binary plus operator.", "Reduce the pair with operator.add."),
        "indirect": ("If I have the first amount and get the second amount more, how much do I have?",
                     "Put both quantities together and tell me the result.",
                     "What do I owe if the two bills are combined?"),
        "misspelt": ("Ad the two numbrs.", "Wht is the summ?", "Compute the totl of bth numbers."),
    },
    "caesar": {
        "synonym": ("Advance each letter one position.", "Increment every character in the alphabet.",
                    "Step each letter up once."),
        "jargon": ("Apply ROT1.", "Encipher with a shift cipher, key 1.", "Map chr(ord(c)+1) with wraparound."),
        "indirect": ("Write the word the way Julius Caesar would with his simplest key.",
                     "Each letter should become its neighbour further down the alphabet.",
                     "Make a become b and z become a."),
        "misspelt": ("Shfit every leter forwrd by one.", "Aply a Ceasar shift of one.", "Encod with a shif of 1."),
    },
    "double": {
        "synonym": ("Reduplicate each character.", "Twin every letter.", "Geminate all the letters."),
        "jargon": ("Apply a repeat-each(2) transform.", "Map each char c to c*2.",
                   "Upsample the string by a factor of two."),
        "indirect": ("Write it as if you had a stutter on every letter.",
                     "Each letter should show up back to back with itself.",
                     "Make the word twice as long by repeating each letter in place."),
        "misspelt": ("Doubel every leter.", "Writ each charcter twise.", "Repet each leter two tims."),
    },
    "devowel": {
        "synonym": ("Excise the vowels.", "Purge a, e, i, o, u.", "Omit every vowel letter."),
        "jargon": ("Strip [aeiou] with a regex.", "Filter out the vocalic characters.",
                   "Apply re.sub on the vowel class."),
        "indirect": ("Write it like a vanity license plate with no vowels.",
                     "Leave only the letters that are not vowels.", "Abbreviate it the way texting drops vowels."),
        "misspelt": ("Remov the vowles.", "Delet every vowl.", "Strp out the vowls."),
    },
    "subtract": {
        "synonym": ("Deduct the latter from the former.", "Take the difference, first less second.",
                    "Reduce the first value by the second."),
        "jargon": ("Return a - b.", "Apply the binary minus operator.", "Compute operator.sub on the pair."),
        "indirect": ("If I had the first amount and spent the second, what is left?",
                     "How far apart are the two numbers, first minus second?",
                     "What remains of the first number once the second is removed?"),
        "misspelt": ("Subtrct the secnd number from the frist.", "Wht is the diference?",
                     "Compute the frist numbr minus the secnd."),
    },
}


def hard_paraphrase_rows(seed: int = 1, per_phrasing: int = 3, version: int = 1) -> list[TaskRow]:
    """Single-skill rows of a hard split on test-split inputs: `per_phrasing` rows per hard phrasing, ids
    `hard-<category>-<skill>-<n>` (version 1, `HARD_PARAPHRASES`) or `hard2-...` (version 2, the clean-room
    `paraphrases_v2.HARD_PARAPHRASES_V2`); no phrasing repeats a training phrasing or one of `PARAPHRASES`."""
    from bricks.toyworld.paraphrases_v2 import HARD_PARAPHRASES_V2

    splits = {1: ("hard", HARD_PARAPHRASES), 2: ("hard2", HARD_PARAPHRASES_V2)}
    if version not in splits:
        raise ValueError(f"unknown hard paraphrase split version {version!r}; expected 1 or 2")
    prefix, phrasings_of = splits[version]
    rng = random.Random(seed)
    rows: list[TaskRow] = []
    for skill_id, kinds in phrasings_of.items():
        seen = set(SKILLS[skill_id].phrasings) | set(PARAPHRASES[skill_id])
        for category in HARD_CATEGORIES:
            for j, phrasing in enumerate(kinds[category]):
                if phrasing in seen:
                    raise ValueError(f"hard paraphrase {phrasing!r} of {skill_id} repeats a known phrasing")
                for n in range(per_phrasing):
                    row = sample_single(rng, skill_id, "test")
                    rows.append(TaskRow(f"{prefix}-{category}-{skill_id}-{j * per_phrasing + n:03d}", phrasing,
                                        row.input, row.output, row.skills))
    return rows
