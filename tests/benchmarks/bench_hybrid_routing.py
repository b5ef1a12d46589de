"""Hybrid retrieval benchmark: dense vs dense + BM25 (reciprocal rank fusion) routing on unseen wording.

    python tests/benchmarks/bench_hybrid_routing.py [--threads 1] [--out FILE.json]

On the toy world (transformers executor, default policy otherwise), side by side in one run: for each retrieval
("dense", "hybrid"), the rows of the hard paraphrase split (`bricks.toyworld.paraphrases.hard_paraphrase_rows`:
synonyms, jargon, indirect, misspelt; written to be hard, never used to fit anything), the single-skill rows of
the paraphrase split, and the single-skill test split (trained phrasings: must not get worse) are planned and run.
Prints JSON: per retrieval and split, routing accuracy (each step's first brick, or the base model, against the
brick serving the row's skill, emergent routing included) and exact match, per skill, and per category for the
hard split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import defaultdict
from pathlib import Path


def _splits() -> dict[str, list[dict]]:
    from bricks.rows import read_rows
    from bricks.toyworld.dataset import split_path
    from bricks.toyworld.paraphrases import hard_paraphrase_rows, paraphrase_rows
    from bricks.toyworld.paths import world_data_dir

    return {"hard": [r.to_json() for r in hard_paraphrase_rows()],
            "paraphrase": [r.to_json() for r in paraphrase_rows() if len(r.skills) == 1],
            "single_test": [r.as_dict() for r in read_rows(split_path(world_data_dir(), "single", "test"))]}


def _score(rows: list[dict], results: list, routes: dict[str, str]) -> dict:
    groups: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for row, res in zip(rows, results):
        want = routes.get(row["skills"][0], "base")
        steps = res.plan.steps
        got = steps[0].config.bricks[0].id if len(steps) == 1 and steps[0].config.bricks else (
            "base" if len(steps) == 1 else "split")
        ok = (got == want, res.output == row["output"])
        groups[row["skills"][0]].append(ok)
        if row["id"].startswith("hard-"):
            groups["category:" + row["id"].split("-")[1]].append(ok)
        groups["all"].append(ok)
    return {k: {"rows": len(v), "routing": round(sum(a for a, _ in v) / len(v), 4),
                "exact_match": round(sum(b for _, b in v) / len(v), 4)} for k, v in sorted(groups.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default).")
    parser.add_argument("--out", type=Path, default=None, help="Also write the JSON here.")
    args = parser.parse_args()

    import torch

    from orchestrator import Orchestrator
    from orchestrator.evaluation import expected_routes

    if args.threads:
        torch.set_num_threads(args.threads)
    splits = _splits()
    report: dict = {"rows": {k: len(v) for k, v in splits.items()}}
    with Orchestrator.from_pretrained() as orc:
        base = orc.planner.routing
        routes = expected_routes(orc.planner.library, emergent_min_retention=base.emergent_min_retention)
        for retrieval in ("dense", "hybrid"):
            orc.planner.routing = dataclasses.replace(base, retrieval=retrieval)
            report[retrieval] = {name: _score(rows, orc.run_batch(rows), routes) for name, rows in splits.items()}
        orc.planner.routing = base
    report["summary"] = {name: {r: report[r][name]["all"] for r in ("dense", "hybrid")} for name in splits}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
