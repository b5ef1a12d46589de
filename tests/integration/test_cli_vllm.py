"""`brickwork run --executor vllm --json` starts its own engine, answers a two-step task, and keeps stdout JSON
(vLLM's own log goes to stderr)."""

import json
import os
import re
import subprocess
import sys


def test_cli_runs_a_plan_on_vllm_with_json_on_stdout(vllm_available):
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")
    env.pop("VLLM_LOGGING_STREAM", None)
    proc = subprocess.run([sys.executable, "-c", "from orchestrator.cli import main; main()", "run",
                           "Reverse the text, then convert to uppercase.", "--input", "planet", "--executor", "vllm",
                           "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["output"] == "TENALP"
    assert [s["instruction"] for s in result["steps"]] == ["Reverse the text.", "Convert to uppercase."]
    # the engine's own log lines ("INFO 11-30 00:25:04 [core.py:133] Initializing a V1 LLM engine ...") went to
    # stderr, and none of them reached stdout (it parsed as one JSON document above)
    assert re.search(r"INFO \d\d-\d\d [\d:]+ \[[\w.]+:\d+\] Initializing a V1 LLM engine", proc.stderr)
    assert "Initializing" not in proc.stdout
