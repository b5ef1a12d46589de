"""How often the vLLM and transformers executors agree outside float32: the conformance suite asks for identical
greedy outputs in float32; in bfloat16 the two engines' kernels sum in other orders, and near-ties between two
tokens can flip. This measures how often, on the toy world.

    python tests/benchmarks/parity_dtype.py [--dtype bfloat16] [--requests 512]

The requests are bench_vllm's: 512 mixed LoRA requests (8 adapters) and 512 masked requests (4 masks). Prints,
per set, the share of outputs the two executors agree on and each one's exact match against the gold answers
(LoRA set; the masks are random, so they have none).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import bench_vllm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--requests", type=int, default=512)
    args = ap.parse_args()

    from bricks.toyworld.paths import world_model_dir
    from orchestrator.executors.transformers import TransformersExecutor
    from orchestrator.executors.vllm.executor import VllmExecutor

    root = Path(tempfile.mkdtemp(prefix="parity-dtype-"))
    lib = bench_vllm._library(root)
    _, mixed, golds, masked = bench_vllm._requests(args.requests)
    ve = VllmExecutor(world_model_dir(), lib, dtype=args.dtype, max_loras=8, max_model_len=256)
    try:
        v_lora, v_mask = ve.generate(mixed), ve.generate(masked)
    finally:
        ve.close()
    te = TransformersExecutor(world_model_dir(), lib, dtype=args.dtype)
    t_lora, t_mask = te.generate(mixed), te.generate(masked)
    te.close()

    def share(a, b):
        return sum(x == y for x, y in zip(a, b)) / len(a)

    def exact(outs):
        return sum(o.strip() == g for o, g in zip(outs, golds)) / len(golds)

    print(json.dumps({
        "dtype": args.dtype,
        "lora_requests": len(mixed), "lora_agreement": share(v_lora, t_lora),
        "lora_exact_match_vllm": exact(v_lora), "lora_exact_match_transformers": exact(t_lora),
        "mask_requests": len(masked), "mask_agreement": share(v_mask, t_mask),
    }, indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
