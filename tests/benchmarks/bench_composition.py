"""Composition benchmark: merged LoRA bricks on both of their skills, merge time and cache hits, and the share
of a multi-step request's time spent planning.

    python tests/benchmarks/bench_composition.py [--pair caesar,double] [--rows 200] [--requests 100] [--weight 1.0]

Prints, in one run on the toy world:
- for each merge method, a merged brick of the two LoRA skills (weights --weight each): exact match on each skill's
  test rows, the time to compute the merge, and the time to reuse it (a cache hit);
- the two single bricks on their own skill, for reference;
- planning overhead: compound test requests run one at a time through `Orchestrator.run`, with the planner's
  time as a share of the whole request time (p50 and aggregate).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def _rows(skill: str, n: int) -> list[dict]:
    from bricks.rows import read_rows
    from bricks.toyworld.dataset import split_path
    from bricks.toyworld.paths import world_data_dir

    rows = [r.as_dict() for r in read_rows(split_path(world_data_dir(), "single", "test")) if r.skills == (skill,)]
    return rows[:n]


def _exact(executor, config, rows) -> float:
    from bricks.prompt import DEFAULT_TEMPLATE
    from orchestrator.executors.base import GenerationRequest
    from orchestrator.plan import Decoding

    reqs = [GenerationRequest(DEFAULT_TEMPLATE.render(r["instruction"], r["input"]), config, Decoding(max_new_tokens=40))
            for r in rows]
    outs = executor.generate(reqs)
    return sum(o.strip() == r["output"] for o, r in zip(outs, rows)) / len(rows)


def merging(pair: tuple[str, str], n: int, weight: float) -> list[dict]:
    from bricks.library import Library
    from bricks.toyworld.paths import world_library_dir, world_model_dir
    from orchestrator.executors.transformers import TransformersExecutor
    from orchestrator.plan import BrickConfig, BrickRef

    lib = Library.open(world_library_dir())
    ex = TransformersExecutor(world_model_dir(), lib)
    refs = [BrickRef(id=b.id, version=b.version, kind="lora", weight=weight) for b in (lib.get(p) for p in pair)]
    data = {p: _rows(p, n) for p in pair}
    table = []
    for p, ref in zip(pair, refs):
        single = BrickConfig(bricks=(ref.model_copy(update={"weight": 1.0}),))
        table.append({"method": f"single {p}", **{s: round(_exact(ex, single, data[s]), 3) for s in pair}})
    for method, density in [("cat", None), ("linear", None), ("svd", None), ("ties", 0.5), ("dare_linear", 0.5),
                            ("dare_ties", 0.5), ("magnitude_prune", 0.5)]:
        cfg = BrickConfig(bricks=tuple(refs), merge=method, density=density)
        t = time.perf_counter()
        ex._activate(cfg)
        merge_ms = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        ex._activate(cfg)
        hit_ms = (time.perf_counter() - t) * 1000
        row = {"method": method + (f" d={density}" if density else ""), **{s: round(_exact(ex, cfg, data[s]), 3)
                                                                          for s in pair},
               "merge_ms": round(merge_ms, 1), "cache_hit_ms": round(hit_ms, 3)}
        table.append(row)
    table.append({"method": "cache", "merges": ex.merge_stats.merges, "hits": ex.merge_stats.hits})
    ex.close()
    return table


def overhead(n: int) -> dict:
    from bricks.rows import read_rows
    from bricks.toyworld.dataset import split_path
    from bricks.toyworld.paths import world_data_dir
    from orchestrator.api import Orchestrator

    rows = read_rows(split_path(world_data_dir(), "compound", "test"))[:n]
    shares, plan_total, total = [], 0.0, 0.0
    with Orchestrator.from_pretrained() as orc:
        orc.run(rows[0].instruction, rows[0].input)  # warm: adapters loaded, embedder ready
        for r in rows:
            t = time.perf_counter()
            res = orc.run(r.instruction, r.input)
            ms = (time.perf_counter() - t) * 1000
            shares.append(res.timings_ms["plan_ms"] / ms)
            plan_total += res.timings_ms["plan_ms"]
            total += ms
    return {"requests": len(rows), "plan_share_p50": round(statistics.median(shares), 4),
            "plan_share_total": round(plan_total / total, 4), "request_ms_mean": round(total / len(rows), 2),
            "plan_ms_mean": round(plan_total / len(rows), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pair", default="caesar,double")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--weight", type=float, default=1.0, help="each brick's weight in the merge")
    ap.add_argument("--only", choices=("merging", "overhead"), default=None)
    args = ap.parse_args()
    pair = tuple(args.pair.split(","))
    if args.only != "merging":
        print("planning overhead:", json.dumps(overhead(args.requests)), flush=True)
    if args.only == "overhead":
        return
    table = merging(pair, args.rows, args.weight)
    print(f"| merge ({args.weight}/{args.weight}) | {pair[0]} | {pair[1]} | merge ms | cache hit ms |")
    print("|---|---|---|---|---|")
    for row in table[:-1]:
        print(f"| {row['method']} | {row[pair[0]]} | {row[pair[1]]} | {row.get('merge_ms', '')} | "
              f"{row.get('cache_hit_ms', '')} |")
    print("cache:", json.dumps(table[-1]))


if __name__ == "__main__":
    main()
