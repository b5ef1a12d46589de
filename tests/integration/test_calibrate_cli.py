"""`brickwork calibrate` on a copy of the shipped library: thresholds saved, then used by the Orchestrator."""

import json
import shutil

from typer.testing import CliRunner

from bricks.toyworld.paths import world_library_dir
from orchestrator.cli import app


def test_calibrate_writes_thresholds_that_planning_uses(tmp_path):
    lib = tmp_path / "library"
    shutil.copytree(world_library_dir(), lib)
    data = tmp_path / "labeled.jsonl"
    rows = [{"instruction": "Shift every letter by one place in the alphabet.", "brick": "caesar"},
            {"instruction": "Turn every letter into the following letter.", "brick": "caesar"},
            {"instruction": "Remove the vowels, then shift every letter forward by one.", "skills": ["devowel", "caesar"]},
            {"instruction": "Write a poem about the letters.", "brick": None},
            {"instruction": "Summarize the letters of the report.", "skills": []}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = CliRunner().invoke(app, ["calibrate", "--data", str(data), "--library", str(lib), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["fitted_steps"] == 6 and set(report["thresholds"]) >= {"caesar", "devowel"}
    saved = json.loads((lib / "routing.json").read_text())
    assert saved["thresholds"] == report["thresholds"]

    from orchestrator.factory import open_planner

    assert dict(open_planner(lib).routing.thresholds) == report["thresholds"]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "skills": "caesar"}\n')
    result = CliRunner().invoke(app, ["calibrate", "--data", str(bad), "--library", str(lib)])
    assert result.exit_code == 2 and "bad.jsonl:1" in result.output
    assert json.loads((lib / "routing.json").read_text()) == saved  # a failed run leaves the old file
