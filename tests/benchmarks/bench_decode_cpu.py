"""Decode on a CPU: the eager path (dynamic KV cache) against bricks.fast_decode's static KV cache, on the toy
world model, per batch size. It decides what FastDecode's "auto" does on a CPU.

    python tests/benchmarks/bench_decode_cpu.py [--batches 1 8 32 128] [--new 32] [--repeat 3] [--compile]

Prints one JSON line per batch size (median wall and process-CPU ms of `generate_texts`, the ratios eager /
static) and, with
--compile, the static cache with the step compiled by inductor (its first call, the compilation, is not timed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def _ms(fns: dict, repeat: int) -> dict:
    """Median wall and CPU ms of each function, the runs interleaved (on a machine shared with other work, the
    CPU time of the process is the steadier of the two)."""
    for fn in fns.values():
        fn()  # warm-up (and compilation)
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    return {name: (statistics.median(wall[name]) * 1000, statistics.median(cpu[name]) * 1000) for name in fns}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--new", type=int, default=32, help="new tokens per row (every row makes all of them)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--compile", action="store_true", help="also the static cache with an inductor-compiled step")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from bricks.fast_decode import FastDecode
    from bricks.generation import generate_texts
    from bricks.model_io import load_model, load_tokenizer
    from bricks.toyworld.paths import world_model_dir

    model = load_model(world_model_dir(), dtype="float32", device="cpu")
    tok = load_tokenizer(world_model_dir())
    base = ["Sort the letters.\nIn: dcba\nOut: ", "Reverse the word.\nIn: hello\nOut: ",
            "Count the vowels.\nIn: banana\nOut: ", "Uppercase the word.\nIn: abc\nOut: "]
    keep_going = {"min_new_tokens": args.new}  # every row decodes all tokens: the same work on both paths
    paths = {"eager": None, "static": FastDecode(enabled=True, compile=False)}
    if args.compile:
        paths["static_compiled"] = FastDecode(enabled=True, compile=True, mode=None)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "new": args.new}), flush=True)
    for b in args.batches:
        prompts = [base[i % len(base)] for i in range(b)]
        row = {"batch": b}
        times = _ms({name: (lambda fast=fast: generate_texts(model, tok, prompts, max_new_tokens=args.new,
                                                             batch_size=b, fast_decode=fast,
                                                             generate_kwargs=keep_going))
                     for name, fast in paths.items()}, args.repeat)
        for name, (wall, cpu) in times.items():
            row[f"{name}_ms"], row[f"{name}_cpu_ms"] = round(wall, 1), round(cpu, 1)
        for name in paths:
            if name != "eager":
                row[f"{name}_speedup_x"] = round(row["eager_ms"] / row[f"{name}_ms"], 2)
                row[f"{name}_cpu_speedup_x"] = round(row["eager_cpu_ms"] / row[f"{name}_cpu_ms"], 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
