"""Routing on unseen wording, before and after each part of it, side by side in one run.

    python tests/benchmarks/bench_routing.py [--threads 1] [--out FILE.json] [--configs before aliases ...]

On the toy world (transformers executor), each configuration plans and runs the same rows:
- "before": the index of descriptions and trained phrasings only, nearest-neighbour routing (no spelling
  repair, no routing head): the routing of the previous release;
- "aliases": the index with the library's aliases (how users word each skill, `bricks.toyworld.aliases`);
- "spelling": aliases plus spelling repair (`index.spelling`);
- "after": aliases, spelling repair and the routing head (`orchestrator.reranker`): the default;
- "hybrid": "aliases" with BM25 rank fusion instead of the head (the earlier attempt, for comparison).
Splitting instructions that route nowhere or twice to one route is rejoined in every configuration.

Splits: "hard" (`hard_paraphrase_rows()`, written by hand) and "hard2" (`hard_paraphrase_rows(version=2)`,
written in a clean room by an author who saw only the skills' definitions; neither was used to write the
aliases, and hard2 was added unread); "paraphrase" (single-skill rows of the paraphrase split), "single_test"
and "compound_test" (trained phrasings: must not get worse).
Then, with the default routing and `abstain=True`, how many distinct instructions abstain (planning only): of
requests no skill serves (`paraphrases.OUT_OF_SCOPE`, and the clean-room near misses of
`aliases.out_of_scope_requests`) and of each split's single-skill instructions.
Prints JSON: per configuration and split, routing accuracy (each single-skill row's one step, against the
brick serving the skill, emergent routing included; compound rows: the whole plan's steps) and exact match,
per skill, and per category for the hard splits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import defaultdict
from pathlib import Path

CONFIGS = {"before": dict(aliases=False, spelling=False, rerank=False, retrieval="dense"),
           "aliases": dict(aliases=True, spelling=False, rerank=False, retrieval="dense"),
           "spelling": dict(aliases=True, spelling=True, rerank=False, retrieval="dense"),
           "after": dict(aliases=True, spelling=True, rerank=True, retrieval="dense"),
           "hybrid": dict(aliases=True, spelling=False, rerank=False, retrieval="hybrid")}


def _splits() -> dict[str, list[dict]]:
    from bricks.rows import read_rows
    from bricks.toyworld.dataset import split_path
    from bricks.toyworld.paraphrases import hard_paraphrase_rows, paraphrase_rows
    from bricks.toyworld.paths import world_data_dir

    return {"hard": [r.to_json() for r in hard_paraphrase_rows()],
            "hard2": [r.to_json() for r in hard_paraphrase_rows(version=2)],
            "paraphrase": [r.to_json() for r in paraphrase_rows() if len(r.skills) == 1],
            "single_test": [r.as_dict() for r in read_rows(split_path(world_data_dir(), "single", "test"))],
            "compound_test": [r.as_dict() for r in read_rows(split_path(world_data_dir(), "compound", "test"))]}


def _score(rows: list[dict], results: list, routes: dict[str, str]) -> dict:
    groups: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for row, res in zip(rows, results):
        # only a plan's first step runs on an emergent brick: later base-skill steps run on the base model
        want = [routes.get(s, "base") if j == 0 or not routes.get(s, "").startswith("emergent-") else "base"
                for j, s in enumerate(row["skills"])]
        got = [s.config.bricks[0].id if s.config.bricks else "base" for s in res.plan.steps]
        ok = (got == want, res.output == row["output"])
        groups[row["skills"][0] if len(row["skills"]) == 1 else "chains"].append(ok)
        if row["id"].startswith("hard"):
            groups["category:" + row["id"].split("-")[1]].append(ok)
        groups["all"].append(ok)
    return {k: {"rows": len(v), "routing": round(sum(a for a, _ in v) / len(v), 4),
                "exact_match": round(sum(b for _, b in v) / len(v), 4)} for k, v in sorted(groups.items())}


def _abstentions(planner, splits: dict[str, list[dict]]) -> dict[str, str]:
    """With the default routing plus `abstain=True`: how many instructions abstain, of requests no skill serves
    (hand-written, and the clean-room near misses) and of the splits' single-skill rows (planning only)."""
    from bricks.toyworld.aliases import out_of_scope_requests
    from bricks.toyworld.paraphrases import OUT_OF_SCOPE

    sets = {"out_of_scope": list(OUT_OF_SCOPE), "out_of_scope_near_misses": out_of_scope_requests(),
            **{name: [r["instruction"] for r in rows if len(r["skills"]) == 1] for name, rows in splits.items()}}
    out = {}
    for name, texts in sets.items():
        plans = planner.plan_many([(t, "abc") for t in dict.fromkeys(texts)])
        out[name] = f"{sum(any(s.abstain for s in p.steps) for p in plans)}/{len(plans)}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default).")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=None, help="Also write the JSON here.")
    args = parser.parse_args()

    import torch

    from index import BrickIndex
    from orchestrator import Orchestrator
    from orchestrator.evaluation import expected_routes
    from orchestrator.library_index import index_fingerprint, library_documents

    if args.threads:
        torch.set_num_threads(args.threads)
    splits = _splits()
    report: dict = {"rows": {k: len(v) for k, v in splits.items()}}
    with Orchestrator.from_pretrained() as orc:
        planner = orc.planner
        base_policy, full_index = planner.routing, planner.index
        bare_index = BrickIndex.build(library_documents(planner.library, aliases=False), full_index.embedder,
                                      source_fingerprint=index_fingerprint(planner.library) + ":no-aliases")
        routes = expected_routes(planner.library, emergent_min_retention=base_policy.emergent_min_retention)
        for name in args.configs:
            cfg = CONFIGS[name]
            planner.index = full_index if cfg["aliases"] else bare_index
            planner.routing = dataclasses.replace(base_policy, spelling=cfg["spelling"], rerank=cfg["rerank"],
                                                  retrieval=cfg["retrieval"])
            report[name] = {}
            for split, rows in splits.items():
                t = time.perf_counter()
                results = orc.run_batch(rows)
                report[name][split] = _score(rows, results, routes)
                report[name][split]["all"]["seconds"] = round(time.perf_counter() - t, 2)
        planner.index, planner.routing = full_index, dataclasses.replace(base_policy, abstain=True)
        report["abstain"] = _abstentions(planner, splits)
        planner.routing = base_policy
    report["summary"] = {split: {name: report[name][split]["all"] for name in args.configs} for split in splits}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
