"""Emergent routing benchmark: the main job with and without routing base-skill steps to emergent bricks.

    python tests/benchmarks/bench_emergent_routing.py [--repeat 3] [--threads 1] [--limit 0] [--out FILE.json]

On the toy world (transformers executor), measured side by side in one run and one process: the single-skill
test split and the compound test split run through `Orchestrator.run_batch` (plan, route, chain), once with the
default policy (`emergent_min_retention=0.99`: a base skill's step runs compact on its emergent brick when the
brick keeps >= 99 % of the base model's right validation answers) and once with emergent routing off (every
base-skill step on the whole model). Runs alternate (off, on, off, on, ...) so warm-up and machine load fall on
both; the time reported is the best of `--repeat` runs (torch on `--threads` threads: on a shared machine, more
threads than free cores make timings swing tenfold). Prints JSON: per configuration, seconds, rows/s,
exact match per skill and per split, the steps routed to each emergent brick, and the FFN share and matmul FLOPs
per token of those steps; and, per base skill, exact match with emergent routing over exact match without
(goal >= 0.99).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import Counter
from pathlib import Path


def _rows(split_kind: str, limit: int) -> list[dict]:
    from bricks.rows import read_rows
    from bricks.toyworld.dataset import split_path
    from bricks.toyworld.paths import world_data_dir
    from orchestrator.evaluation import per_chain

    return per_chain([r.as_dict() for r in read_rows(split_path(world_data_dir(), split_kind, "test"))], limit)


def _matmul_flops(config, ffn_share: float) -> int:
    """Matmul FLOPs per token of one forward pass (attention projections, FFN with `ffn_share` of its neurons,
    LM head); attention scores are left out (they depend on the context length, and no brick changes them)."""
    h, i, layers, v = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    attention = 2 * (h * h * 2 + h * kv * 2)  # q, o and k, v projections
    ffn = 2 * 3 * h * round(i * ffn_share)
    return layers * (attention + ffn) + 2 * h * v


def _run(orc, rows: list[dict], chunk: int = 512) -> tuple[list, float]:
    t = time.perf_counter()
    results = []
    for i in range(0, len(rows), chunk):
        results += orc.run_batch(rows[i:i + chunk])
    return results, time.perf_counter() - t


def _summary(rows: list[dict], results: list, seconds: float, library, model_config) -> dict:
    from bricks.evaluation import score_outputs

    scores = score_outputs(rows, [r.output for r in results])
    emergent: Counter[str] = Counter()
    steps = 0
    density: dict[str, float] = {}
    for res in results:
        for step in res.plan.steps:
            steps += 1
            for b in step.config.bricks:
                if b.kind == "ffn_mask":
                    emergent[b.id] += 1
                    density[b.id] = library.get(b.id, b.version).manifest.metrics.get("density", 1.0)
    dense = _matmul_flops(model_config, 1.0)
    flops = {k: round(_matmul_flops(model_config, d) / dense, 3) for k, d in density.items()}
    return {"rows": len(rows), "seconds": round(seconds, 2), "rows_per_s": round(len(rows) / seconds, 1),
            "exact_match": round(sum(r.output == row["output"] for r, row in zip(results, rows)) / len(rows), 4),
            "per_skill": {k: round(v.accuracy, 4) for k, v in scores.items()},
            "steps": steps, "steps_on_emergent_bricks": dict(sorted(emergent.items())),
            "flops_per_token_vs_dense": flops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="Runs per configuration (the best time is kept).")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default).")
    parser.add_argument("--limit", type=int, default=0, help="At most this many rows per skill chain (0: all).")
    parser.add_argument("--out", type=Path, default=None, help="Also write the JSON here.")
    args = parser.parse_args()

    import torch

    from orchestrator import Orchestrator

    if args.threads:
        torch.set_num_threads(args.threads)
    splits = {"single": _rows("single", args.limit), "compound": _rows("compound", args.limit)}
    report: dict = {"splits": {k: len(v) for k, v in splits.items()}, "repeat": args.repeat,
                    "threads": torch.get_num_threads()}
    with Orchestrator.from_pretrained() as orc:
        on = orc.planner.routing
        off = dataclasses.replace(on, emergent_min_retention=None)
        configs = {"emergent_off": off, "emergent_on": on}
        model_config = orc.executor.model.config
        orc.run_batch(splits["single"][:64])  # warm-up: load bricks, build caches
        best: dict[tuple[str, str], tuple[list, float]] = {}
        for _ in range(args.repeat):
            for name, routing in configs.items():
                orc.planner.routing = routing
                for split, rows in splits.items():
                    results, seconds = _run(orc, rows)
                    if (name, split) not in best or seconds < best[name, split][1]:
                        best[name, split] = (results, seconds)
                    print(f"{name} {split}: {seconds:.1f}s", file=sys.stderr, flush=True)
        orc.planner.routing = on
        for (name, split), (results, seconds) in best.items():
            report.setdefault(name, {})[split] = _summary(splits[split], results, seconds, orc.planner.library,
                                                          model_config)
        report["emergent_min_retention"] = on.emergent_min_retention
    base_skills = [s for s in report["emergent_off"]["single"]["per_skill"] if s in
                   ("reverse", "uppercase", "sort", "count", "add")]
    report["base_skill_ratio_on_vs_off"] = {
        s: round(report["emergent_on"]["single"]["per_skill"][s] / report["emergent_off"]["single"]["per_skill"][s], 4)
        if report["emergent_off"]["single"]["per_skill"][s] else None for s in base_skills}
    report["time_ratio_on_vs_off"] = {split: round(report["emergent_on"][split]["seconds"]
                                                   / report["emergent_off"][split]["seconds"], 3) for split in splits}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
