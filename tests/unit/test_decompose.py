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
