"""Every failure of `brickwork run` is named and changes the exit status: none answers wrongly with exit 0.

Each test is the reproduction of a case that gave a wrong answer (or a traceback) with exit status 0.
"""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app

runner = CliRunner()


def _plan(tmp_path, bricks, *, steps=1, input="planet"):
    step = {"instruction": "Reverse the text.", "config": {"bricks": bricks}}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"instruction": "Reverse the text.", "input": input,
                                "steps": [dict(step, input_from=None if i == 0 else i - 1) for i in range(steps)]}))
    return path


@pytest.mark.parametrize("brick,named", [
    ({"id": "nosuch", "version": 1, "kind": "lora"}, "no brick 'nosuch'"),
    ({"id": "caesar", "version": 99, "kind": "lora"}, "caesar"),
    ({"id": "caesar", "version": 1, "kind": "ffn_mask"}, "mask.safetensors"),
])
def test_a_failed_step_of_a_given_plan_exits_1_and_names_the_error(tmp_path, brick, named):
    res = runner.invoke(app, ["run", "--plan", str(_plan(tmp_path, [brick]))])
    assert res.exit_code == 1, res.output
    assert "error: step 0 failed:" in res.stderr and named in res.stderr
    assert "output:" not in res.stdout  # no empty answer printed as if it were one


def test_a_failed_step_exits_1_with_json_too(tmp_path):
    res = runner.invoke(app, ["run", "--json", "--plan", str(_plan(tmp_path, [{"id": "nosuch", "version": 1,
                                                                                 "kind": "lora"}]))])
    assert res.exit_code == 1
    assert json.loads(res.stdout)["error"].startswith("step 0 failed:")


def test_a_plan_of_an_unknown_brick_kind_is_refused_before_running(tmp_path):
    res = runner.invoke(app, ["run", "--plan", str(_plan(tmp_path, [{"id": "x", "version": 1, "kind": "moe"}]))])
    assert res.exit_code == 2 and "unknown brick kind 'moe'" in res.stderr


def test_a_plan_over_the_step_limit_is_refused(tmp_path):
    res = runner.invoke(app, ["run", "--plan", str(_plan(tmp_path, [], steps=301))])
    assert res.exit_code == 2 and "at most 64" in res.stderr and "301" in res.stderr


def test_plan_given_a_directory_is_one_line(tmp_path):
    res = runner.invoke(app, ["run", "--plan", str(tmp_path)])
    assert res.exit_code == 2
    assert res.stderr.strip() == f"error: --plan {str(tmp_path)!r} is a directory; expected a plan JSON file"


def test_a_missing_input_is_refused_when_the_library_needs_one():
    res = runner.invoke(app, ["run", "Reverse the text."])
    assert res.exit_code == 2 and "needs an input" in res.stderr
    assert runner.invoke(app, ["run", "Reverse the text.", "--input", "planet"]).exit_code == 0


def test_a_prompt_longer_than_the_context_fails_its_row_only():
    from orchestrator.api import Orchestrator

    with Orchestrator.from_pretrained() as orc:
        long, short = orc.run_batch([("Reverse the text.", "a" * 400), ("Reverse the text.", "planet")])
    assert long.error and "more than the model's context of 256 tokens" in long.error and long.output == ""
    assert short.error is None and short.output == "tenalp"


def test_non_utf8_bytes_in_an_argument_are_one_line():
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", "Reverse the text.", "--input",
                           b"pl\xffnet"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: input is not valid UTF-8 (bad byte 0xff at character 2)"
    assert "Traceback" not in proc.stderr


def test_python_m_has_every_command_of_the_console_script():
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "--help"], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, COLUMNS="200"))
    assert proc.returncode == 0
    for command in ("run", "plan", "batch", "bricks", "index", "analyze", "eval", "toyworld", "calibrate", "info"):
        assert f" {command} " in proc.stdout, command
    bricks = subprocess.run([sys.executable, "-m", "orchestrator.cli", "bricks", "--help"], capture_output=True,
                            text=True, timeout=120, env=dict(os.environ, COLUMNS="200"))
    for command in ("train", "update", "add", "remove", "rollback", "verify", "discover", "list", "show"):
        assert f" {command} " in bricks.stdout, command


def test_debug_prints_the_traceback_of_a_named_error(tmp_path):
    bad = tmp_path / "plan.json"
    bad.write_text("{not json")
    plain = runner.invoke(app, ["run", "--plan", str(bad)])
    debug = runner.invoke(app, ["--debug", "run", "--plan", str(bad)])
    assert plain.exit_code == debug.exit_code == 2
    assert "Traceback" not in plain.stderr and plain.stderr.count("\n") == 1
    assert "Traceback" in debug.stderr and "PlanError" in debug.stderr
