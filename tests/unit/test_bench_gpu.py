"""tests/benchmarks/bench_gpu.py --small runs where only torch, transformers, safetensors and peft import (the
lent GPU machine has no pydantic, faiss or vllm), and prints every section."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("pydantic", "faiss", "vllm")

SITECUSTOMIZE = f"""
import sys
for _name in {BLOCKED!r}:  # as if not installed: `import` fails, importlib.util.find_spec answers None
    sys.modules[_name] = None
"""


def _env(tmp_path) -> dict:
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(tmp_path), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


def test_the_blocker_blocks(tmp_path):
    for name in BLOCKED:
        done = subprocess.run([sys.executable, "-c", f"import {name}"], env=_env(tmp_path), capture_output=True,
                              text=True, timeout=60)
        assert done.returncode != 0 and f"import of {name} halted" in done.stderr, (name, done.stderr[-500:])


def test_bench_gpu_small_runs_without_pydantic_faiss_vllm_and_prints_every_section(tmp_path):
    done = subprocess.run([sys.executable, "tests/benchmarks/bench_gpu.py", "--small"], cwd=ROOT,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    rows = [json.loads(line) for line in lines if line.startswith("{")]
    failed = [r for r in rows if any(k.endswith("error") or k.endswith("skipped") for k in r)]
    assert not failed, done.stdout[-3000:]
    parts = {r.get("part") for r in rows}
    assert {"ffn", "model", "point", "decode", "brick", "lora", "prefix"} <= parts
    prefix = next(r for r in rows if r.get("part") == "prefix")
    assert prefix["same_texts"] == f"{prefix['rows']}/{prefix['rows']}" and prefix["store_hits"] >= 2
    ffn = [r for r in rows if r.get("part") == "ffn" and "tokens" in r]
    assert [r["tokens"] for r in ffn] == [1, 16] and all("compact25_x" in r and "masked25_x" in r for r in ffn)
    points = {(r["variant"], r["path"], r["batch"]): r for r in rows if r.get("part") == "point"}
    assert set(points) == {(v, p, n) for v in ("dense", "brick") for p in ("eager", "fast") for n in (1, 4)}
    assert all(r["static"] for k, r in points.items() if k[1] == "fast")  # the fast path ran (static cache)
    assert not any(r["static"] for k, r in points.items() if k[1] == "eager")
    cache = next(r["compact_cache"] for r in rows if "compact_cache" in r)
    assert cache["builds"] == 1 and cache["hits"] >= 3  # one compact build for the brick, reused after
    lora = next(r for r in rows if r.get("part") == "lora" and "base_ms" in r)
    assert {"one_pass_ms", "peft_mixed_ms", "grouped_ms", "one_pass_vs_base_x"} <= set(lora)
    summary = lines[lines.index("== summary (issue #18 goals)") + 1:]
    for figure in ("25% brick vs dense, fast decode, batch 1", "fast decode at batch 1, % of bandwidth limit",
                   "8 mixed LoRAs (one pass) / base time"):
        assert any(line.startswith(figure) for line in summary), figure
    assert rows[-1].get("done") is True
