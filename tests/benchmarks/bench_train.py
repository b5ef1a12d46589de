"""LoRA training of one toy-world skill: the hand-written loop (before issue #21) against HF `Trainer`, same settings.

    python tests/benchmarks/bench_train.py [--skill double] [--steps 300] [--batch-size 64] [--eval-every 100]
                                           [--target 0.99] [--repeat 1] [--old-ref 4f1bca2] [--only new|old] [--json]

The old loop is not kept in the package: it is read from git (`git show REF:bricks/training/lora.py`, the last
commit with the hand-written loop) into a temp module and run on the same rows, config and seed. Each side loads
the toy world's base model afresh on the CPU, trains on the skill's single-skill training rows (the held-out part
split off by the same seed), and is measured on the skill's test rows. Prints held-out exact match, test exact
match, steps, wall and CPU seconds (the least of `--repeat` runs, old and new alternating, after a two-step
warm-up run of each that pays the imports) and seconds per step side by side, and the largest difference between
the two adapters' weights.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OLD_REF = "4f1bca2ca243abb5bdc08ba3264bf157fc0206b1"  # last commit whose lora.py has the hand-written loop
REPO = Path(__file__).resolve().parents[2]


def _old_train_lora(ref: str):
    """`train_lora` of the hand-written loop, from git."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:bricks/training/lora.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="bench-train-")) / "old_lora.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_lora", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_lora"] = module
    spec.loader.exec_module(module)
    return module.train_lora, module.LoraTrainConfig


def _train(train_lora, cfg, rows):
    from bricks.model_io import load_model, load_tokenizer
    from bricks.toyworld.paths import world_model_dir

    tokenizer = load_tokenizer(world_model_dir())
    base = load_model(world_model_dir(), device="cpu")
    wall, cpu = time.perf_counter(), time.process_time()
    result = train_lora(base, tokenizer, rows, cfg)
    return result, tokenizer, time.perf_counter() - wall, time.process_time() - cpu


def _measure(name: str, result, tokenizer, cfg, test_rows) -> dict:
    """What the adapter reaches: held-out and test exact match, steps, its LoRA weights."""
    from bricks.evaluation import exact_match_by_skill

    test = exact_match_by_skill(result.model, tokenizer, [{**r.as_dict(), "skills": ["all"]} for r in test_rows],
                                max_new_tokens=cfg.max_new_tokens)["all"].accuracy
    weights = {k: v.detach().clone() for k, v in result.model.state_dict().items() if "lora_" in k}
    return {"impl": name, "holdout_exact_match": round(result.holdout_accuracy, 4), "test_exact_match": round(test, 4),
            "steps": result.steps, "history": [list(h) for h in result.history], "_weights": weights}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skill", default="double")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--target", type=float, default=0.99)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="Timed runs of each (least time reported).")
    ap.add_argument("--old-ref", default=OLD_REF)
    ap.add_argument("--only", choices=["new", "old"], default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    from bricks.rows import read_rows
    from bricks.toyworld.dataset import split_path
    from bricks.toyworld.paths import world_data_dir
    from bricks.training.lora import LoraTrainConfig, train_lora

    rows = [r for r in read_rows(split_path(world_data_dir(), "single", "train")) if r.skills == (args.skill,)]
    test_rows = [r for r in read_rows(split_path(world_data_dir(), "single", "test")) if r.skills == (args.skill,)]
    settings = dict(max_steps=args.steps, batch_size=args.batch_size, eval_every=args.eval_every,
                    target_accuracy=args.target, seed=args.seed)
    sides = []
    if args.only != "new":
        old_train, old_cfg = _old_train_lora(args.old_ref)
        sides.append((f"old loop ({args.old_ref[:7]})", old_train, old_cfg))
    if args.only != "old":
        sides.append(("HF Trainer", train_lora, LoraTrainConfig))
    for _, train, config in sides:  # warm-up: imports paid outside the timed runs
        _train(train, config(**{**settings, "max_steps": 2, "eval_every": 2}), rows)
    results: list[dict] = []
    timings: list[list[tuple[float, float]]] = [[] for _ in sides]
    for run in range(args.repeat):  # alternating, so that a busy machine slows both alike
        for times, (name, train, config) in zip(timings, sides):
            result, tokenizer, wall, cpu = _train(train, config(**settings), rows)
            times.append((wall, cpu))
            if run == 0:
                results.append(_measure(name, result, tokenizer, config(**settings), test_rows))
    for r, times in zip(results, timings):
        wall, cpu = min(t[0] for t in times), min(t[1] for t in times)
        r.update(seconds=round(wall, 1), cpu_seconds=round(cpu, 1), s_per_step=round(wall / r["steps"], 3),
                 timed_runs=len(times))
    diff = None
    if len(results) == 2:
        a, b = results[0]["_weights"], results[1]["_weights"]
        diff = max(float((a[k] - b[k]).abs().max()) for k in a) if a.keys() == b.keys() else float("nan")
    for r in results:
        r.pop("_weights")
    report = {"skill": args.skill, "train_rows": len(rows), "test_rows": len(test_rows), "settings": settings,
              "torch_threads": torch.get_num_threads(), "results": results, "max_abs_lora_weight_diff": diff}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"skill {args.skill}: {len(rows)} rows, {len(test_rows)} test rows, {settings}, "
          f"{torch.get_num_threads()} torch threads")
    print(f"{'impl':<22}{'held-out EM':>12}{'test EM':>9}{'steps':>7}{'wall s':>8}{'CPU s':>8}{'s/step':>8}  history")
    for r in results:
        print(f"{r['impl']:<22}{r['holdout_exact_match']:>12.3f}{r['test_exact_match']:>9.3f}{r['steps']:>7}"
              f"{r['seconds']:>8.1f}{r['cpu_seconds']:>8.1f}{r['s_per_step']:>8.3f}  {r['history']}")
    if diff is not None:
        print(f"largest |old - new| over the LoRA weights: {diff:.3g}")


if __name__ == "__main__":
    main()
