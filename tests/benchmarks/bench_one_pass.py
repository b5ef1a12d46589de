"""One-pass mixed batches against one `generate` per brick configuration, on the toy world's own library.

    python tests/benchmarks/bench_one_pass.py [--requests 512] [--batches 8 32 128] [--repeat 2]

Makes `--requests` requests over the library's configurations (base model, each LoRA brick, each emergent
ffn_mask brick, and LoRA + mask), shuffled, and sends them to the transformers executor in calls of B requests,
once with one-pass mixed batches (stacked LoRA and per-row masks) and once grouped (one `generate` per
configuration; mask-only groups compact), in one process, one after the other, best of `--repeat`; and once
more one-pass with every masked row masked (`row_masks` without `compact`: what running the prompts of rows that
share a mask on its compact FFN matrices gains). Prints requests/s of each, the ratios, and whether the outputs
are equal.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import time


def _requests(n: int, library, seed: int = 0):
    from bricks.prompt import DEFAULT_TEMPLATE
    from orchestrator.executors.base import GenerationRequest
    from orchestrator.plan import BrickConfig, BrickRef, Decoding

    active = [b for b in library.list() if b.kind in ("lora", "ffn_mask")]
    refs = [BrickRef(id=b.id, version=b.version, kind=b.kind) for b in active]
    loras = [r for r in refs if r.kind == "lora"]
    masks = [r for r in refs if r.kind == "ffn_mask"]
    configs = [BrickConfig()] + [BrickConfig(bricks=(r,)) for r in refs] + \
              [BrickConfig(bricks=(lo, m)) for lo, m in zip(loras, masks)]
    words = ["planet", "garden", "silver", "window", "basket", "orange", "purple", "candle", "forest", "bridge"]
    rng = random.Random(seed)
    d = Decoding(max_new_tokens=16)
    return [GenerationRequest(DEFAULT_TEMPLATE.render("Reverse the text.", rng.choice(words)), rng.choice(configs), d)
            for _ in range(n)], len(configs)


@contextlib.contextmanager
def _rows_masked():
    """One-pass batches whose masked rows all run the whole FFN, masked (no compact parts)."""
    import bricks.emergent.row_masks as rm

    original = rm.row_masks

    def masked(*args, compact=None, **kwargs):  # the executor's `compact` flags dropped
        return original(*args, **kwargs)

    rm.row_masks = masked  # the executor imports it on each call
    try:
        yield
    finally:
        rm.row_masks = original


def _run(executor, requests, batch: int) -> tuple[float, list[str]]:
    t = time.perf_counter()
    out: list[str] = []
    for start in range(0, len(requests), batch):
        out += executor.generate(requests[start : start + batch])
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    from bricks.library import Library
    from bricks.toyworld.paths import world_library_dir, world_model_dir
    from orchestrator.executors.transformers import TransformersExecutor

    library = Library.open(world_library_dir())
    requests, n_configs = _requests(args.requests, library)
    one = TransformersExecutor(world_model_dir(), library, mixed_batches=True)
    grouped = TransformersExecutor(world_model_dir(), library, mixed_batches=False)
    one.generate(requests[:64]), grouped.generate(requests[:64])  # load and merge every brick once
    print(f"{len(requests)} requests over {n_configs} brick configurations, max_new_tokens 16")
    print(f"{'batch':>6} {'one-pass req/s':>15} {'grouped req/s':>14} {'ratio':>7} {'all masked req/s':>17} "
          f"{'ratio':>7}  same outputs")
    for batch in args.batches:
        best_one = best_grouped = best_masked = float("inf")
        for _ in range(args.repeat):
            t1, out1 = _run(one, requests, batch)
            t2, out2 = _run(grouped, requests, batch)
            with _rows_masked():
                t3, out3 = _run(one, requests, batch)
            best_one, best_grouped, best_masked = min(best_one, t1), min(best_grouped, t2), min(best_masked, t3)
        n = len(requests)
        print(f"{batch:>6} {n / best_one:>15.1f} {n / best_grouped:>14.1f} {best_grouped / best_one:>6.2f}x "
              f"{n / best_masked:>17.1f} {best_masked / best_one:>6.2f}x  {out1 == out2 == out3} "
              f"({sum(a == b for a, b in zip(out1, out2))}/{n}, {sum(a == b for a, b in zip(out1, out3))}/{n})")


if __name__ == "__main__":
    main()
