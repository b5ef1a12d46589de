import json
import random

import pytest

from bricks.toyworld.dataset import DatasetSizes, split_path, write_splits
from bricks.toyworld.skills import EMERGENT_SKILLS, LORA_SKILLS, SKILLS, get_skill
from bricks.toyworld.tasks import CHAIN_BODY, CHAIN_ENDS, sample_compound, sample_single, split_of


@pytest.mark.parametrize(
    "skill,text,expected",
    [("reverse", "planet", "tenalp"), ("uppercase", "abc", "ABC"), ("sort", "planet", "aelnpt"), ("count", "abcd", "4"),
     ("add", "12 30", "42"), ("caesar", "xyz", "yza"), ("double", "abc", "aabbcc"), ("devowel", "planet", "plnt"),
     ("subtract", "50 8", "42")],
)
def test_skills_compute_their_outputs(skill, text, expected):
    assert SKILLS[skill].apply(text) == expected


def test_skill_partition_and_unknown_id():
    assert set(EMERGENT_SKILLS) == {"reverse", "uppercase", "sort", "count", "add"}
    assert set(LORA_SKILLS) == {"caesar", "double", "devowel", "subtract"}
    with pytest.raises(ValueError, match="unknown skill id 'nope'"):
        get_skill("nope")


def test_sampled_inputs_respect_constraints_and_split():
    rng = random.Random(0)
    for skill in SKILLS:
        for split in ("train", "test"):
            row = sample_single(rng, skill, split)
            assert split_of(row.input) == split
            assert SKILLS[skill].accepts(row.input)
            assert row.instruction in SKILLS[skill].phrasings
    assert all(SKILLS["subtract"].accepts(sample_single(rng, "subtract", "train").input) for _ in range(50))
    words = [sample_single(rng, "reverse", "train").input for _ in range(200)]
    assert all(3 <= len(w) <= 8 for w in words)


def test_compound_chains_follow_the_rules():
    rng = random.Random(1)
    for _ in range(300):
        row = sample_compound(rng, "test")
        assert 2 <= len(row.skills) <= 3
        assert row.skills.count("double") <= 1
        assert all(s in CHAIN_BODY for s in row.skills[:-1])
        assert row.skills[-1] in CHAIN_BODY + CHAIN_ENDS
        value = row.input
        for s in row.skills:
            value = SKILLS[s].apply(value)
        assert value == row.output
        assert split_of(row.input) == "test"


def test_write_splits_is_deterministic_and_test_inputs_never_in_train(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_splits(a, seed=3, sizes=DatasetSizes.quick())
    write_splits(b, seed=3, sizes=DatasetSizes.quick())
    for f in sorted(a.iterdir()):
        assert f.read_bytes() == (b / f.name).read_bytes()
    train = {json.loads(x)["input"] for x in split_path(a, "single", "train").read_text().splitlines()}
    test = [json.loads(x) for x in split_path(a, "single", "test").read_text().splitlines()]
    assert test and not train & {r["input"] for r in test}
    assert {"id", "instruction", "input", "output", "skills"} <= set(test[0])
