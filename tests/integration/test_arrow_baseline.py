"""`brickwork eval --pipeline --router arrow`: PEFT's Arrow over the toy world's LoRA bricks, as a baseline in the
same output shape as the brickwork pipeline (issue #16)."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from bricks.toyworld.paths import world_library_dir
from bricks.toyworld.skills import SKILLS
from orchestrator.arrow_baseline import ArrowUnavailable, build_arrow_model
from orchestrator.cli import app

LORA = ["caesar", "devowel", "double", "subtract"]  # the toy world's lora-kind bricks; the emergent ones are masks


def _eval(*extra: str) -> dict:
    res = CliRunner().invoke(app, ["eval", "--pipeline", "--kind", "single", "--limit", "2", "--json", *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_arrow_reports_like_the_pipeline_and_routes_over_the_lora_bricks():
    arrow, brickwork = _eval("--router", "arrow"), _eval()
    assert arrow["router"] == "arrow" and brickwork["router"] == "brickwork"
    assert set(arrow) - {"arrow"} == set(brickwork)  # same keys, plus Arrow's own summary
    assert set(arrow["scores"]) == set(brickwork["scores"]) == set(SKILLS)
    for skill, score in arrow["scores"].items():
        assert set(score) == set(brickwork["scores"][skill]) == {"correct", "total", "accuracy"}
        assert score["total"] == brickwork["scores"][skill]["total"] == 2
    summary = arrow["arrow"]
    assert summary["bricks"] == LORA and summary["adapters"] == len(LORA)  # the Arrow model was really built
    assert summary["top_k"] == 3 and summary["router_temperature"] == 1.0
    assert arrow["plans"] is None and brickwork["plans"]["plans"] == 2 * len(SKILLS)
    correct = sum(v["correct"] for v in arrow["scores"].values())
    assert summary["exact_match"] == round(correct / (2 * len(SKILLS)), 4)
    # one prompt a row with every LoRA mixed per token: no better than planning, routing and chaining
    assert correct <= sum(v["correct"] for v in brickwork["scores"].values())


def test_unknown_router_and_router_without_pipeline_are_one_line_errors():
    res = CliRunner().invoke(app, ["eval", "--pipeline", "--router", "nonsense"])
    assert res.exit_code == 2 and res.stderr.strip() == ("error: unknown router 'nonsense'; "
                                                         "expected brickwork or arrow")
    res = CliRunner().invoke(app, ["eval", "--router", "arrow"])
    assert res.exit_code == 2 and res.stderr.strip() == "error: --router arrow applies with --pipeline"


def test_arrow_on_a_library_without_lora_bricks_says_why(tmp_path):
    library = tmp_path / "library"
    shutil.copytree(world_library_dir(), library)
    for brick in LORA:
        shutil.rmtree(library / "bricks" / brick)
    res = CliRunner().invoke(app, ["eval", "--pipeline", "--router", "arrow", "--library", str(library),
                                   "--limit", "1"])
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == "error: the library holds no LoRA bricks for Arrow to route over"


def test_build_arrow_model_turns_peft_refusals_into_one_error(tmp_path):
    with pytest.raises(ArrowUnavailable, match="no LoRA bricks"):
        build_arrow_model(object(), [])
    with pytest.raises(ArrowUnavailable, match="cannot route over these LoRA bricks"):
        build_arrow_model(object(), [tmp_path])  # no adapter_config.json: PEFT's ValueError, one line
