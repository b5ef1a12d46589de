"""Planning benchmark: latency per instruction (toy library and 100 000 bricks), batch throughput, cold start.

    python tests/benchmarks/bench_planning.py [--bricks 100000] [--queries 200]

Prints, side by side in one run: plan latency p50/p99 with the toy library and with a synthetic library of
N bricks (5 texts each, random unit vectors in the embedder's space; queries are real instructions embedded
by the real embedder), the share of planning spent in the FAISS search, batch planning throughput, and the
cold start of `brickwork run` split into imports, model load and index load (in a fresh subprocess).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np


def _pct(values, q):
    return float(np.percentile(np.array(values), q))


def _instructions(n: int) -> list[tuple[str, str]]:
    from bricks.rows import read_rows
    from bricks.toyworld.dataset import split_path
    from bricks.toyworld.paths import world_data_dir

    rows = read_rows(split_path(world_data_dir(), "compound", "test")) + read_rows(
        split_path(world_data_dir(), "single", "test"))
    seen, out = set(), []
    for r in rows:
        if r.instruction not in seen:
            seen.add(r.instruction)
            out.append((r.instruction, r.input))
    return out[:n]


def _time_plans(planner, tasks, *, fresh_embeddings: bool = False) -> list[float]:
    """ms per plan; with `fresh_embeddings` the embedder's cache is emptied first, so every step is embedded."""
    times = []
    for instruction, text in tasks:
        if fresh_embeddings:
            planner.index.embedder._cache.clear()
        t = time.perf_counter()
        planner.plan(instruction, text)
        times.append((time.perf_counter() - t) * 1000)
    return times


class _SyntheticLibrary:
    """The toy library's bricks plus n synthetic ones; only what the Planner reads."""

    def __init__(self, real, n: int) -> None:
        fake = [SimpleNamespace(key=f"syn{i}@1", id=f"syn{i}", version=1, kind="lora",
                                manifest=SimpleNamespace(prompt_template=None)) for i in range(n)]
        self._bricks = real.list() + fake
        self.base_examples = real.base_examples

    def list(self):
        return self._bricks


def _synthetic_index(real_index, embedder, n: int, texts_per_brick: int = 5):
    from index import BrickIndex

    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(n * texts_per_brick, embedder.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    keys = [f"syn{i // texts_per_brick}@1" for i in range(n * texts_per_brick)]
    texts = [f"synthetic {i}" for i in range(n * texts_per_brick)]
    entries = real_index.entries
    real_keys = [k for k, _ in entries.values()]
    real_texts = [t for _, t in entries.values()]
    real_vecs = embedder.embed(real_texts)
    return BrickIndex.from_vectors(keys + real_keys, texts + real_texts, np.vstack([vecs, real_vecs]), embedder,
                                   source_fingerprint="synthetic")


def _cold_start() -> dict[str, float]:
    code = r"""
import json, time
t0 = time.perf_counter()
import torch, transformers, faiss, sentence_transformers, peft
from orchestrator.api import Orchestrator
t1 = time.perf_counter()
from bricks.library import Library
from bricks.model_io import load_model, load_tokenizer
from bricks.toyworld.paths import world_model_dir, world_library_dir
model = load_model(world_model_dir()); tok = load_tokenizer(world_model_dir())
t2 = time.perf_counter()
from index import SentenceTransformerEmbedder
from orchestrator.library_index import open_index
lib = Library.open(world_library_dir()); idx = open_index(lib, SentenceTransformerEmbedder()); idx.search("Reverse the text.")
t3 = time.perf_counter()
print(json.dumps({"imports_s": t1 - t0, "model_load_s": t2 - t1, "index_load_s": t3 - t2}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bricks", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()

    from index import SentenceTransformerEmbedder
    from orchestrator.factory import open_library, open_planner
    from orchestrator.planner import Planner

    embedder = SentenceTransformerEmbedder(cache_size=100_000)
    toy = open_planner(embedder=embedder)
    tasks = _instructions(args.queries)
    toy.plan("Reverse the text.", "abc")  # load the embedder

    cold = _time_plans(toy, tasks, fresh_embeddings=True)
    warm = _time_plans(toy, tasks)

    t = time.perf_counter()
    synthetic_index = _synthetic_index(toy.index, embedder, args.bricks)
    build_s = time.perf_counter() - t
    big = Planner(_SyntheticLibrary(open_library(), args.bricks), synthetic_index)
    big_cold = _time_plans(big, tasks, fresh_embeddings=True)
    big_warm = _time_plans(big, tasks)

    parts = [p for instruction, _ in tasks for p in big.decomposer.split(instruction)]
    vecs = embedder.embed(parts)
    search_ms = []
    for v in vecs:
        t = time.perf_counter()
        synthetic_index.search_vectors(v[None, :], big.routing.k)
        search_ms.append((time.perf_counter() - t) * 1000)
    steps_per_plan = len(parts) / len(tasks)

    batch = [(f"{i}: " + instruction, text) for i, (instruction, text) in enumerate(tasks * 5)]
    t = time.perf_counter()
    toy.plan_many(batch)
    batch_rate = len(batch) / (time.perf_counter() - t)

    cold_start = _cold_start()
    report = {
        "toy library: plan ms p50/p99 (embedding every step)": (_pct(cold, 50), _pct(cold, 99)),
        "toy library: plan ms p50/p99 (cached embeddings)": (_pct(warm, 50), _pct(warm, 99)),
        f"{args.bricks} bricks: plan ms p50/p99 (embedding every step)": (_pct(big_cold, 50), _pct(big_cold, 99)),
        f"{args.bricks} bricks: plan ms p50/p99 (cached embeddings)": (_pct(big_warm, 50), _pct(big_warm, 99)),
        f"{args.bricks} bricks: FAISS search ms p50 per step": _pct(search_ms, 50),
        f"{args.bricks} bricks: search share of planning p50 (embedding every step)":
            steps_per_plan * _pct(search_ms, 50) / statistics.median(big_cold),
        f"{args.bricks} bricks: search share of planning p50 (cached embeddings)":
            steps_per_plan * _pct(search_ms, 50) / statistics.median(big_warm),
        f"{args.bricks} bricks: index build s (IVF, {5 * args.bricks} vectors)": build_s,
        "batch planning, instructions/s (unique instructions)": batch_rate,
        "cold start s: imports / model load / index load": (cold_start["imports_s"], cold_start["model_load_s"],
                                                            cold_start["index_load_s"]),
    }
    for k, v in report.items():
        shown = " / ".join(f"{x:.3f}" for x in v) if isinstance(v, tuple) else f"{v:.3f}"
        print(f"{k:62} {shown}")


if __name__ == "__main__":
    main()
