"""The quality gate of emergent bricks: retention measured against the base model, and what is added."""

import pytest

from bricks import BaseModelRef, Library
from bricks.emergent.pipeline import Candidate, add_candidates, gate_candidates, gate_failure, split_holdout
from bricks.emergent.quality import Retention, measure_retention
from bricks.errors import BrickworkError
from bricks.rows import InstructionRow

BASE = BaseModelRef(name="tiny", fingerprint="sha256:aaa")


def _rows(outputs):
    return [{"instruction": "Reverse the text.", "input": "x", "output": o, "skills": ["reverse"]} for o in outputs]


def test_retention_counts_only_the_base_models_right_answers():
    rows = _rows(["a", "b", "c", "d", "e"])
    base = ["a", "b", "c", "d", "wrong"]  # 4 right
    brick = ["a", "b", "x", "d ", "e"]  # 4 right, but only 3 of the base's (it also gets "e", which the base missed)
    r = measure_retention(rows, base, brick)
    assert (r.rows, r.base_correct, r.correct, r.kept) == (5, 4, 4, 3)
    assert r.retention == 0.75 and r.exact_match == 0.8 and r.base_exact_match == 0.8
    assert r.metrics() == {"retention_validation": 0.75, "exact_match_validation": 0.8,
                           "base_exact_match_validation": 0.8, "rows_validation": 5.0}
    assert Retention(3, 0, 1, 0).retention == 0.0  # nothing to keep: never passes
    assert Retention(101, 99, 98, 98).metrics()["retention_validation"] == 0.9898  # rounded down, never up
    with pytest.raises(BrickworkError, match="3 rows but 2 base and 3 brick answers"):
        measure_retention(_rows("abc"), ["a", "b"], ["a", "b", "c"])


def test_holdout_takes_every_fifth_row_of_each_skill():
    rows = [InstructionRow(f"{s}{i}", "x", "y", "z", (s,)) for i in range(10) for s in ("a", "b")]
    rows.append(InstructionRow("c0", "x", "y", "z", ("a", "b")))  # compound rows are neither
    fit, held = split_holdout(rows)
    assert [r.id for r in held] == ["a4", "b4", "a9", "b9"] and len(fit) == 16
    with pytest.raises(BrickworkError, match="holdout every 1 rows"):
        split_holdout(rows, every=1)


def _candidate(tmp_path, brick_id, retention):
    import torch

    return Candidate(brick_id, {0: torch.arange(16) % 2 == 0, 1: torch.ones(16, dtype=torch.bool)},
                     f"Neurons of {brick_id}.", ("Reverse the text.",), ("reverse",), "reverse",
                     {"density": 0.75, **(retention.metrics() if retention else {})}, retention)


def test_gate_refuses_or_keeps_unroutable_what_falls_short(tmp_path):
    lib = Library.create(tmp_path / "lib", BASE, ["Reverse the text."])
    good = _candidate(tmp_path, "good", Retention(100, 100, 99, 99))
    low = _candidate(tmp_path, "low", Retention(100, 100, 90, 90))
    few = _candidate(tmp_path, "few", Retention(10, 10, 10, 10))  # perfect, on too few rows
    unmeasured = _candidate(tmp_path, "unmeasured", None)
    assert gate_failure(good, 0.95) == ""
    assert gate_failure(low, 0.95) == "keeps 0.9000 of the base model's right answers, under min_retention 0.95"
    assert gate_failure(few, 0.95) == ("measured on 10 rows the base model answers right, fewer than "
                                       "min_support 20")
    assert gate_failure(unmeasured, 0.95) == "retention not measured"
    added, refused = add_candidates(lib, [good, low, few, unmeasured], min_retention=0.95)
    assert [b.key for b in added] == ["good@1"] and [c.brick_id for c in refused] == ["low", "few", "unmeasured"]
    assert lib.ids() == ["good"] and lib.get("good").manifest.metrics["retention_validation"] == 0.99
    assert getattr(lib.get("good").manifest, "routable", True) is True
    added, refused = add_candidates(lib, [low], min_retention=0.95, keep_failing=True)
    assert [b.key for b in added] == ["low@1"] and lib.get("low").manifest.routable is False
    added, _ = add_candidates(lib, [few], min_retention=0.95, min_support=10)
    assert [b.key for b in added] == ["few@1"]
    with pytest.raises(BrickworkError, match="min_retention 1.5 must be in"):
        add_candidates(lib, [good], min_retention=1.5)


def test_gate_measures_candidates_on_held_out_rows_of_their_skill(tiny):
    import torch

    model, tok = tiny
    rows = [InstructionRow(f"r{i}", "Reverse the text.", w, w[::-1], ("reverse",)) for i, w in enumerate(
        ["abc", "kite", "plane", "xy"])]
    full = Candidate("all", {i: torch.ones(64, dtype=torch.bool) for i in range(2)}, "All.", ("Reverse.",),
                     ("reverse",), "reverse")
    gated = gate_candidates(model, tok, [full], rows, max_new_tokens=4)
    r = gated[0].retention
    assert r.rows == 4 and r.correct == r.base_correct == r.kept  # every neuron kept: the base model's answers
    assert gated[0].metrics["density"] == 1.0 and gated[0].metrics["rows_validation"] == 4.0
    other = Candidate("other", full.masks, "Other.", ("Sort.",), ("sort",), "sort")
    with pytest.raises(BrickworkError, match="no held-out rows of skill 'sort' to measure brick 'other' on; "
                                             "held-out skills: reverse"):
        gate_candidates(model, tok, [other], rows)
