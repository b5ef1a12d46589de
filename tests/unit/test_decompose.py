import pytest

from policies import DecompositionError, RuleDecomposer, SingleStep, normalize_step


@pytest.mark.parametrize(
    "text,steps",
    [
        ("Reverse the text, then convert to uppercase.", ["Reverse the text.", "Convert to uppercase."]),
        ("Sort the letters and then count the letters.", ["Sort the letters.", "Count the letters."]),
        ("Remove the vowels. After that, double every letter.", ["Remove the vowels.", "Double every letter."]),
        ("Spell it in reverse; next, write each character twice. Finally, how many characters does the input have?",
         ["Spell it in reverse.", "Write each character twice.", "How many characters does the input have?"]),
        ("1. reverse the text\n2. sort the letters", ["Reverse the text.", "Sort the letters."]),
        ("- remove the vowels\n- convert to uppercase", ["Remove the vowels.", "Convert to uppercase."]),
        ("First, sort the letters. Then reverse the text.", ["Sort the letters.", "Reverse the text."]),
        ("Add the two numbers.", ["Add the two numbers."]),
    ],
)
def test_rule_decomposer_splits_chains(text, steps):
    assert RuleDecomposer().split(text) == steps


def test_too_many_steps_refused_with_count():
    with pytest.raises(DecompositionError, match="3 steps, more than max_steps=2"):
        RuleDecomposer(max_steps=2).split("Reverse the text, then sort the letters, then count the letters.")


def test_single_step_and_normalize():
    assert SingleStep().split("reverse the text, then sort") == ["Reverse the text, then sort."]
    assert normalize_step("  what is the sum? ") == "What is the sum?"


@pytest.mark.parametrize(
    "text,steps",
    [
        ("Reverse the text. Following that, Take out the vowels.", ["Reverse the text.", "Take out the vowels."]),
        ("Reverse the text. Following that, take out the vowels.", ["Reverse the text.", "Take out the vowels."]),
        ("Step one: reverse the text. Step two: take out the vowels.", ["Reverse the text.", "Take out the vowels."]),
        ("Sort the letters; step two: count them.", ["Sort the letters.", "Count them."]),
        ("Step three - sort it.", ["Sort it."]),
        ("Reverse it, and following that count the letters.", ["Reverse it.", "Count the letters."]),
        ("Reverse the text. Thereafter, count the letters.", ["Reverse the text.", "Count the letters."]),
        ("Reverse the text. As a next step, count the letters.", ["Reverse the text.", "Count the letters."]),
        ("Reverse the text. In the end, count the letters.", ["Reverse the text.", "Count the letters."]),
        ("Reverse the text. Then: count the letters.", ["Reverse the text.", "Count the letters."]),
        ("Sort it. The next step is to count the letters.", ["Sort it.", "Count the letters."]),
        ("Sort it. Having done that, double every letter.", ["Sort it.", "Double every letter."]),
    ],
)
def test_connective_phrases_stay_out_of_the_steps(text, steps):
    assert RuleDecomposer().split(text) == steps


@pytest.mark.parametrize("text", ["At the end of the word add nothing.", "Following the rules, sort the letters.",
                                  "Stepwise, reverse it.", "Lastname first."])
def test_instructions_that_start_like_a_connective_are_kept_whole(text):
    assert RuleDecomposer().split(text) == [text]
