"""The vLLM executor started at a script's top level: inside a spawned worker that re-imports the script's
__main__, it stops with one line saying what to do, instead of multiprocessing's "bootstrapping phase" crash.
No vLLM is started (nor imported: a stub module stands in for it)."""

import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from bricks.errors import BrickworkError, ConfigError
from orchestrator.executors.vllm import executor

ROOT = Path(__file__).resolve().parents[2]
ADVICE = "put the code that starts the vLLM executor under `if __name__ == '__main__':`"


def test_inside_a_spawned_childs_bootstrap_the_executor_refuses_in_one_line(monkeypatch):
    monkeypatch.setattr("multiprocessing.current_process", lambda: types.SimpleNamespace(_inheriting=True))
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    with pytest.raises(ConfigError) as e:
        executor._import_vllm()
    assert isinstance(e.value, BrickworkError) and ADVICE in str(e.value) and "\n" not in str(e.value)


def test_outside_a_bootstrap_vllm_is_imported(monkeypatch):
    stub = types.ModuleType("vllm")
    monkeypatch.setitem(sys.modules, "vllm", stub)
    monkeypatch.setattr("multiprocessing.current_process", lambda: types.SimpleNamespace(_inheriting=False))
    assert executor._import_vllm() is stub


def test_a_real_spawned_child_that_reimports_main_gets_the_advice(tmp_path):
    """What vLLM's spawned workers do to an unguarded script: the child runs the script's top level again."""
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        import multiprocessing, sys, types
        sys.path.insert(0, {str(ROOT)!r})
        sys.modules["vllm"] = types.ModuleType("vllm")
        from orchestrator.executors.vllm.executor import _import_vllm

        _import_vllm()  # at the top level, as `Orchestrator.from_pretrained(executor="vllm")` would be

        def work():
            pass

        if __name__ == "__main__":
            child = multiprocessing.get_context("spawn").Process(target=work)
            child.start()
            child.join()
            print("child exit code", child.exitcode)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "child exit code 1" in proc.stdout
    assert "ConfigError: the vLLM executor was started while a spawned worker process" in proc.stderr
    assert ADVICE in proc.stderr and "bootstrapping phase" not in proc.stderr
