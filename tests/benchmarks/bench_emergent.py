"""Emergent-brick benchmark: compact FFN vs dense FFN, generation with a brick, profiling memory.

    python tests/benchmarks/bench_emergent.py [--hidden 2048] [--intermediate 5632] [--tokens 512]

Prints, measured side by side in one run:
- one Llama gated FFN of the given size (random weights, float32, CPU): dense time vs compact time with 25 % and
  50 % of the neurons kept, and the speedup (goal >= 2.5x at 25 %; the FLOPs limit is 4x);
- the same FFN masked (hooks zeroing neurons): no FLOPs saved, for contrast;
- greedy generation on the toy world model: dense vs compact with a 25 % brick in every layer;
- peak resident memory of profiling 1 000 and 10 000 prompts (each in a fresh subprocess).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def _time(fn, repeat: int = 20) -> float:
    fn()
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1000


def ffn(hidden: int, intermediate: int, tokens: int) -> dict:
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    from bricks.emergent.masking import apply_masks, compact_ffn

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate)
    mlp = LlamaMLP(cfg).eval()

    class Holder(torch.nn.Module):  # the layout emergent bricks expect: model.layers[i].mlp
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Module()])
            self.layers[0].mlp = mlp

    model = Holder()
    x = torch.randn(1, tokens, hidden)
    out = {}
    with torch.inference_mode():
        dense = _time(lambda: mlp(x))
        out["dense_ms"] = round(dense, 3)
        for share in (0.25, 0.5):
            keep = torch.zeros(intermediate, dtype=torch.bool)
            keep[torch.randperm(intermediate)[: int(share * intermediate)]] = True
            with compact_ffn(model, {0: keep}):
                t = _time(lambda: mlp(x))
            with apply_masks(model, {0: keep}):
                m = _time(lambda: mlp(x))
            out[f"compact_{int(share * 100)}_ms"] = round(t, 3)
            out[f"compact_{int(share * 100)}_speedup"] = round(dense / t, 2)
            out[f"masked_{int(share * 100)}_speedup"] = round(dense / m, 2)
    return out


def generation() -> dict:
    import torch

    from bricks.emergent.masking import compact_ffn
    from bricks.generation import generate_texts
    from bricks.model_io import load_model, load_tokenizer
    from bricks.toyworld.paths import world_model_dir

    model, tok = load_model(world_model_dir()), load_tokenizer(world_model_dir())
    prompts = [f"Reverse the text.\nIn: {w}\nOut: " for w in ("planet", "kitchen", "zebra", "moon") * 16]
    g = torch.Generator().manual_seed(0)
    masks = {i: torch.rand(model.config.intermediate_size, generator=g) < 0.25
             for i in range(model.config.num_hidden_layers)}
    run = lambda: generate_texts(model, tok, prompts, max_new_tokens=16)  # noqa: E731
    dense = _time(run, 5)
    with compact_ffn(model, masks):
        compact = _time(run, 5)
    return {"prompts": len(prompts), "dense_ms": round(dense, 1), "compact_25_ms": round(compact, 1),
            "speedup": round(dense / compact, 2)}


PROFILE_CHILD = """
import resource, sys
from bricks.emergent import profile_neurons
from bricks.model_io import load_model, load_tokenizer
from bricks.toyworld.paths import world_model_dir
n = int(sys.argv[1])
m, t = load_model(world_model_dir()), load_tokenizer(world_model_dir())
skills = ("reverse", "sort", "count", "uppercase", "add")
prompts = ((skills[i % 5], f"Do {skills[i % 5]}.\\nIn: word{i}\\nOut: ") for i in range(n))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
profile_neurons(m, t, prompts, batch_size=64)
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def profiling_memory() -> dict:
    out = {}
    for n in (1000, 10000):
        res = subprocess.run([sys.executable, "-c", PROFILE_CHILD, str(n)], capture_output=True, text=True, check=True)
        before, after = (int(v) for v in res.stdout.split()[-2:])
        out[f"{n}_prompts_peak_rss_mb"] = round(after / 1024, 1)
        out[f"{n}_prompts_growth_mb"] = round((after - before) / 1024, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    print("ffn:", json.dumps(ffn(args.hidden, args.intermediate, args.tokens)), flush=True)
    print("generation (toy world):", json.dumps(generation()), flush=True)
    if not args.skip_memory:
        print("profiling memory:", json.dumps(profiling_memory()), flush=True)


if __name__ == "__main__":
    main()
