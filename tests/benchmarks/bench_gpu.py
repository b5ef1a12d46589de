"""GPU benchmark (issue #18): decode speed on the Llama-3-8B shapes, random weights built on the device.

    python tests/benchmarks/bench_gpu.py [--small] [--budget-s 285] [--bandwidth-gbs 4800] [--sections 1 2 3 4]

Prints JSON lines (comparable with ../shared/gpu/gpu_bench.py's: same shapes, prompt 64, 64 new tokens), every
ratio measured side by side in this run, then a summary against the issue's goals:
1. decode tok/s at batch 1/32/128, eager `generate` (dynamic KV cache) and the fast path (bricks.fast_decode:
   static KV cache, decode step compiled, CUDA graphs), against the memory-bandwidth limit: the bytes one decode
   step must read (every weight but the embedding table, plus the KV cache of the context) at --bandwidth-gbs
   (4800: an H200's HBM3e). Decode tok/s = B x (new - 1) / (time of `generate` - time of its prefill alone).
2. a 25 % emergent brick (exactly 25 % of the FFN neurons of every layer) run compact, against dense, at each
   batch size, eager and fast (compact matrices built once, in a CompactCache).
3. 8 LoRA adapters (r 16, every linear layer) on 256 requests (interleaved: row i has adapter i % 8) against the
   base model on the same requests: one pass (bricks.lora.multi), PEFT's mixed batch (`adapter_names`), and one
   `generate` per adapter (grouped). Eager `generate`, --lora-new new tokens.
4. one FFN layer (4096 x 14336): compact and masked against dense at 1..4,096 tokens, and what building the
   compact matrices costs without and with the cache.
5. the prefix cache: 32 requests that share a --system-tokens system prompt, each with its own 32-token question:
   whole prompts, the shared start computed once per batch (bricks.prefix_share), and taken from the store an
   earlier batch filled (bricks.prefix_cache); then one request alone, whole against stored. Lean decoding,
   --lora-new new tokens; whether the texts are the same.
The run stops starting costly points when --budget-s would be passed (a fast-path point is first a
compilation); what is skipped says so. Each point that fails prints its error and the run goes on.

Needs only torch, transformers and peft: brickwork's modules it uses (bricks.fast_decode, bricks.emergent's
masking, bricks.lora.multi) import nothing else, and are loaded here without their packages' __init__ (which
need pydantic). `--small` runs a tiny Llama on the CPU in seconds (static cache, no compilation): the test
tests/unit/test_bench_gpu.py runs it where pydantic, faiss and vllm cannot be imported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
T0 = time.time()


def _stub_packages() -> None:
    """Let `bricks.x.y` import without running `bricks/__init__.py` and friends (pydantic is not on the GPU box)."""
    for name in ("bricks", "bricks.emergent", "bricks.lora"):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [str(ROOT.joinpath(*name.split(".")))]
            sys.modules[name] = module


def say(**row) -> None:
    row["t"] = round(time.time() - T0, 1)
    print(json.dumps(row), flush=True)


def args_of(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="a tiny Llama, a few tokens (runs on a CPU in seconds)")
    ap.add_argument("--budget-s", type=float, default=None, help="wall time to stay under (default 285; small 600)")
    ap.add_argument("--bandwidth-gbs", type=float, default=4800.0, help="memory bandwidth, GB/s (H200: 4800)")
    ap.add_argument("--sections", type=int, nargs="+", default=[1, 2, 3, 4, 5], choices=[1, 2, 3, 4, 5])
    ap.add_argument("--system-tokens", type=int, default=None, help="section 5's shared prompt (default 512; small 24)")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="default 1 32 128 (small: 1 4)")
    ap.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 64; small 8)")
    ap.add_argument("--new", type=int, default=None, help="new tokens (default 64; small 4)")
    ap.add_argument("--lora-requests", type=int, default=None, help="default 256 (small 8)")
    ap.add_argument("--lora-new", type=int, default=None, help="new tokens in section 3 (default 16; small 2)")
    ap.add_argument("--share", type=float, default=0.25, help="the brick's share of FFN neurons")
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                    help="compile the fast path's decode step (auto: on CUDA only)")
    ap.add_argument("--backend", default="inductor")
    ap.add_argument("--mode", default="reduce-overhead", help="torch.compile mode ('none': the backend's default)")
    ap.add_argument("--reps", type=int, default=2, help="timed runs per point (median)")
    a = ap.parse_args(argv)
    small = a.small
    a.budget_s = a.budget_s or (600.0 if small else 285.0)
    a.batches = a.batches or ([1, 4] if small else [1, 32, 128])
    a.prompt = a.prompt or (8 if small else 64)
    a.new = a.new or (4 if small else 64)
    a.lora_requests = a.lora_requests or (8 if small else 256)
    a.lora_new = a.lora_new or (2 if small else 16)
    a.system_tokens = a.system_tokens or (24 if small else 512)
    return a


class Bench:
    """The device, the clock and the budget shared by every section."""

    def __init__(self, args) -> None:
        import torch

        self.args, self.torch = args, torch
        self.dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.dtype = torch.bfloat16 if self.dev == "cuda" else torch.float32
        self.summary: list[tuple[str, str, str, str]] = []  # (figure, value, goal, verdict)

    def left(self) -> float:
        return self.args.budget_s - (time.time() - T0)

    def sync(self) -> None:
        if self.dev == "cuda":
            self.torch.cuda.synchronize()

    def timed(self, fn) -> tuple[float, object]:
        """(ms, what fn returned), the device synchronized before and after."""
        self.sync()
        t = time.perf_counter()
        out = fn()
        self.sync()
        return (time.perf_counter() - t) * 1000, out

    def ms(self, fn) -> float:
        return self.timed(fn)[0]

    def median_ms(self, fn, reps: int, warm: int = 1) -> float:
        for _ in range(warm):
            fn()
        return statistics.median(self.ms(fn) for _ in range(reps))

    def free(self) -> None:
        import gc

        gc.collect()
        if self.dev == "cuda":
            self.torch.cuda.empty_cache()

    def goal(self, figure: str, value: float | None, goal: str, ok: bool | None, unit: str = "") -> None:
        shown = "skipped" if value is None else f"{value:.2f}{unit}"
        self.summary.append((figure, shown, goal, "-" if value is None or ok is None else ("PASS" if ok else "FAIL")))


def ffn_section(b: Bench) -> None:
    """4. One FFN layer: dense vs compact vs masked per token count; building compact matrices, cached or not."""
    torch = b.torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    from bricks.emergent.compact_cache import CompactCache
    from bricks.emergent.masking import apply_masks, compact_ffn

    small = b.args.small
    H, I = (64, 256) if small else (4096, 14336)
    mlp = LlamaMLP(LlamaConfig(hidden_size=H, intermediate_size=I)).to(b.dev, b.dtype).eval()
    holder = torch.nn.Module()  # the layout emergent bricks expect: model.layers[i].mlp
    holder.layers = torch.nn.ModuleList([torch.nn.Module()])
    holder.layers[0].mlp = mlp
    g = torch.Generator().manual_seed(0)

    def keep(share):
        k = torch.zeros(I, dtype=torch.bool)
        k[torch.randperm(I, generator=g)[: int(share * I)]] = True
        return k.to(b.dev)

    masks = {share: keep(share) for share in (0.25, 0.5)}
    with torch.inference_mode():
        for T in ((1, 16) if small else (1, 16, 64, 256, 1024, 4096)):
            x = torch.randn(1, T, H, device=b.dev, dtype=b.dtype)
            dense = b.median_ms(lambda: mlp(x), reps=10, warm=2)
            row = dict(part="ffn", tokens=T, dense_ms=round(dense, 4))
            for share, k in masks.items():
                with compact_ffn(holder, {0: k}):
                    c = b.median_ms(lambda: mlp(x), reps=10, warm=2)
                with apply_masks(holder, {0: k}):
                    m = b.median_ms(lambda: mlp(x), reps=10, warm=2)
                row[f"compact{int(share * 100)}_x"] = round(dense / c, 2)
                row[f"masked{int(share * 100)}_x"] = round(dense / m, 2)
            say(**row)
        cache = CompactCache(max_bytes=2**30)

        def enter(c=None):
            with compact_ffn(holder, {0: masks[0.25]}, cache=c):
                pass

        built = b.median_ms(enter, reps=5, warm=1)
        cached = b.median_ms(lambda: enter(cache), reps=5, warm=1)
        say(part="ffn", compact_build_ms_per_layer=round(built, 3), compact_cached_ms_per_layer=round(cached, 3),
            cache_builds=cache.stats.builds, cache_hits=cache.stats.hits)


def llama(b: Bench):
    """The Llama-3-8B-config model (tiny with --small), random weights, built on the device; kept on `b.model`."""
    if getattr(b, "model", None) is not None:
        return b.model
    torch = b.torch
    from transformers import LlamaConfig, LlamaForCausalLM

    small = b.args.small
    cfg = LlamaConfig(hidden_size=64 if small else 4096, intermediate_size=256 if small else 14336,
                      num_hidden_layers=2 if small else 32, num_attention_heads=4 if small else 32,
                      num_key_value_heads=2 if small else 8, vocab_size=256 if small else 128256,
                      max_position_embeddings=4096 if small else 8192, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    start = time.time()
    torch.manual_seed(0)
    torch.set_default_dtype(b.dtype)
    try:
        with torch.device(b.dev):
            b.model = LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    say(part="model", params_b=round(sum(p.numel() for p in b.model.parameters()) / 1e9, 3),
        init_s=round(time.time() - start, 1))
    return b.model


def generate(b: Bench, model, ids, new: int, **kw):
    """Greedy `generate` of exactly `new` tokens per row. ids: [B, P] -> [B, P + new]."""
    with b.torch.inference_mode():
        return model.generate(input_ids=ids, attention_mask=b.torch.ones_like(ids), max_new_tokens=new,
                              min_new_tokens=new, do_sample=False, pad_token_id=0, **kw)


def decode_point(b: Bench, model, batch: int, fast, context) -> dict:
    """One path at one batch size: `generate` of --new tokens and of 1 (the prefill), median of --reps each;
    decode ms per step = (full - prefill) / (new - 1)."""
    import contextlib

    from bricks.fast_decode import decode_kwargs

    a = b.args
    ids = b.torch.randint(10, model.config.vocab_size, (batch, a.prompt),
                          generator=b.torch.Generator().manual_seed(batch)).to(b.dev)
    with context() if context else contextlib.nullcontext():
        kw = decode_kwargs(model, fast) if fast is not None else {}
        first = b.ms(lambda: generate(b, model, ids, a.new if kw else 2, **kw))  # fast: compiles (then records)
        full = b.median_ms(lambda: generate(b, model, ids, a.new, **kw), reps=a.reps, warm=1 if kw else 0)
        prefill = b.median_ms(lambda: generate(b, model, ids, 1, **kw), reps=a.reps, warm=0)
    step = (full - prefill) / (a.new - 1) if full > prefill else None  # None: lost in the noise (a busy CPU)
    return dict(full_ms=full, prefill_ms=prefill, step_ms=step, tok_s=batch * 1000 / step if step else None,
                first_ms=first,
                static=bool(kw), compiled="compile_config" in kw)


def decode_sections(b: Bench) -> None:
    """1. eager vs fast decode against the bandwidth limit; 2. the compact brick against dense, per batch."""
    torch = b.torch
    from bricks.emergent.compact_cache import CompactCache
    from bricks.emergent.masking import compact_ffn
    from bricks.fast_decode import FastDecode

    a = b.args
    model = llama(b)
    cfg = model.config
    size = lambda ps: sum(p.numel() * p.element_size() for p in ps)  # noqa: E731
    embed = model.get_input_embeddings().weight
    read = size(model.parameters()) - size([embed])  # one step reads every weight but the embedding table
    ffn = size(p for layer in model.model.layers for p in layer.mlp.parameters())
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * embed.element_size()
    context = a.prompt + a.new / 2  # the mean context a step attends to

    def limit(batch: int, weights: float) -> float:  # tok/s when every byte is read once at the bandwidth
        return batch / ((weights + batch * kv_token * context) / (a.bandwidth_gbs * 1e9))

    g = torch.Generator().manual_seed(1)
    keep = int(a.share * cfg.intermediate_size)  # exactly this many neurons in every layer
    masks = {i: torch.zeros(cfg.intermediate_size, dtype=torch.bool).index_fill_(
        0, torch.randperm(cfg.intermediate_size, generator=g)[:keep], True).to(b.dev)
        for i in range(cfg.num_hidden_layers)}
    cache = CompactCache(max_bytes=32 * 2**30)
    brick = lambda: compact_ffn(model, masks, cache=cache)  # noqa: E731
    compile_on = {"auto": "auto", "on": True, "off": False}[a.compile]
    fast = FastDecode(enabled=True, compile=compile_on, backend=a.backend, mode=None if a.mode == "none" else a.mode)
    variants = {"dense": None, "brick": brick} if 2 in a.sections else {"dense": None}
    say(part="decode", weight_gb=round(read / 1e9, 2), ffn_gb=round(ffn / 1e9, 2), brick_share=a.share,
        kv_mb_per_row=round(kv_token * context / 1e6, 1), fast=str(fast))
    reserve = 0 if 3 not in a.sections or a.small else 35  # what section 3 needs at least
    compiles, measured = (120.0 if b.dev == "cuda" else 5.0), False  # seconds a compilation may take
    seen: set = set()  # (variant, batch == 1): a graph that exists (batch 1 is compiled apart from the others)
    points: dict = {}
    plan = [(v, "eager", n) for n in a.batches for v in variants]
    plan += [(v, "fast", n) for n in a.batches for v in variants]
    for variant, path, batch in plan:
        new_graph = path == "fast" and (variant, batch == 1) not in seen
        need = (compiles if new_graph else 0) + (20 if not a.small else 0)
        if b.left() - reserve < need:
            say(part="decode", variant=variant, path=path, batch=batch, skipped=f"time: {b.left():.0f} s left")
            continue
        try:
            p = decode_point(b, model, batch, fast if path == "fast" else None, variants[variant])
        except Exception as e:  # noqa: BLE001
            say(part="decode", variant=variant, path=path, batch=batch, error=f"{type(e).__name__}: {e}"[:300])
            continue
        if new_graph:
            seen.add((variant, batch == 1))
            first_s = 1.2 * p["first_ms"] / 1000
            compiles, measured = (max(compiles, first_s) if measured else max(first_s, 5.0)), True
        points[variant, path, batch] = p
        say(part="point", variant=variant, path=path, batch=batch, **{k: round(v, 3) if isinstance(v, float) else v
                                                                       for k, v in p.items()})
    _decode_report(b, points, limit, read, ffn, cache)


def _decode_report(b: Bench, points: dict, limit, read: float, ffn: float, cache) -> None:
    a = b.args
    brick_read = read - (1 - a.share) * ffn
    for batch in a.batches:
        e, f = points.get(("dense", "eager", batch)), points.get(("dense", "fast", batch))
        lim = limit(batch, read)
        row = dict(part="decode", batch=batch, prompt=a.prompt, new=a.new, limit_tok_s=round(lim))
        e = e if e and e["tok_s"] else None
        f = f if f and f["tok_s"] else None
        if e:
            row.update(dense_ms=round(e["full_ms"], 1), tok_s_dense=round(e["tok_s"]), eager_pct_of_limit=round(
                100 * e["tok_s"] / lim, 1))
        if f:
            row.update(fast_ms=round(f["full_ms"], 1), tok_s_fast=round(f["tok_s"]),
                       fast_pct_of_limit=round(100 * f["tok_s"] / lim, 1), fast_first_call_s=round(
                           f["first_ms"] / 1000, 1), fast_compiled=f["compiled"])
        if e and f:
            row["fast_vs_eager_x"] = round(f["tok_s"] / e["tok_s"], 2)
        say(**row)
        if 2 not in a.sections:
            continue
        row = dict(part="brick", batch=batch, share=a.share, limit_x=round(limit(batch, brick_read) / lim, 2))
        for path in ("eager", "fast"):
            d, c = points.get(("dense", path, batch)), points.get(("brick", path, batch))
            if d and c and d["tok_s"] and c["tok_s"]:
                row[f"{path}_compact25_x"] = round(d["full_ms"] / c["full_ms"], 2)  # whole generate (as ../shared)
                row[f"{path}_decode_x"] = round(c["tok_s"] / d["tok_s"], 2)
                row[f"{path}_tok_s_brick"] = round(c["tok_s"])
        say(**row)
        if batch in (1, 32):
            x = row.get("fast_decode_x")
            b.goal(f"25% brick vs dense, fast decode, batch {batch}", x, ">= 1.6x", x is not None and x >= 1.6, "x")
    f = points.get(("dense", "fast", 1))
    pct = 100 * f["tok_s"] / limit(1, read) if f and f["tok_s"] else None
    b.goal("fast decode at batch 1, % of bandwidth limit", pct, ">= 50 %", pct is not None and pct >= 50, " %")
    for batch in a.batches:
        e, f = points.get(("dense", "eager", batch)), points.get(("dense", "fast", batch))
        x = f["tok_s"] / e["tok_s"] if e and f and e["tok_s"] and f["tok_s"] else None
        b.goal(f"fast vs eager decode, batch {batch}", x, "(no goal)", None, "x")
    say(part="decode", compact_cache=vars(cache.stats))


def lora_section(b: Bench) -> None:
    """3. 8 LoRA adapters on the same requests: one pass, PEFT mixed, grouped; against the base model."""
    torch = b.torch
    from peft import LoraConfig, get_peft_model

    try:
        from bricks.lora.multi import mixed_lora_pass
    except ImportError:  # HOOK: bricks.lora.multi (the one-pass mixed batch) is not there; PEFT's ways only
        mixed_lora_pass = None
    a = b.args
    model = llama(b)
    if b.dev == "cuda":
        import torch._dynamo

        torch._dynamo.reset()  # sections 1-2's compiled steps and their CUDA-graph memory are not needed here
        b.free()
    start = time.time()
    lcfg = LoraConfig(r=16, lora_alpha=32, init_lora_weights=False,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    pm = get_peft_model(model, lcfg, adapter_name="a0")
    for k in range(1, 8):
        pm.add_adapter(f"a{k}", lcfg)
    pm.eval()
    b.model = None  # the model now carries LoRA layers: no later section may take it for the plain one
    n = a.lora_requests
    rows = [f"a{i % 8}" for i in range(n)]  # interleaved: every batch mixes all eight
    ids = torch.randint(10, model.config.vocab_size, (n, a.prompt), generator=torch.Generator().manual_seed(7))
    ids = ids.to(b.dev)
    say(part="lora", adapters=8, requests=n, new=a.lora_new, init_s=round(time.time() - start, 1),
        one_pass=mixed_lora_pass is not None)

    def base():
        with pm.disable_adapter():
            return generate(b, pm, ids, a.lora_new)

    def one_pass():
        with mixed_lora_pass(pm, rows):
            return generate(b, pm, ids, a.lora_new)

    def peft_mixed():
        return generate(b, pm, ids, a.lora_new, adapter_names=rows)

    def grouped():
        for k in range(8):
            pm.set_adapter(f"a{k}")
            generate(b, pm, ids[k::8], a.lora_new)

    out, tokens = {}, {}

    def attempt(name: str, fn, warm: bool) -> None:  # one way's failure (out of memory, ...) spares the others
        try:
            if warm:
                fn()
            out[f"{name}_ms"], tokens[name] = b.timed(fn)
        except Exception as e:  # noqa: BLE001
            out[f"{name}_error"] = f"{type(e).__name__}: {e}"[:300]
            b.free()

    generate(b, pm, ids[:8], 2, adapter_names=rows[:8])  # warm-up
    attempt("base", base, warm=True)
    if mixed_lora_pass is not None:
        attempt("one_pass", one_pass, warm=True)
    est = 15 * out.get("base_ms", 5000) / 1000  # PEFT's mixed batch took 12x the base in ../shared (H200)
    for name, fn in (("peft_mixed", peft_mixed), ("grouped", grouped)):
        if b.left() < est + 5:
            out[f"{name}_skipped"] = f"time: {b.left():.0f} s left"
            continue
        attempt(name, fn, warm=False)
    for name in ("one_pass", "peft_mixed", "grouped"):
        if f"{name}_ms" in out and "base_ms" in out:
            out[f"{name}_vs_base_x"] = out[f"{name}_ms"] / out["base_ms"]  # time ratio: lower is better
    if tokens.get("one_pass") is not None and tokens.get("peft_mixed") is not None:
        new = [t[:, a.prompt:] for t in (tokens["one_pass"], tokens["peft_mixed"])]
        same = (new[0] == new[1]).all(dim=1).float().mean().item()
        out["one_pass_same_rows_as_peft"] = same  # greedy tokens; bf16 sums in another order may differ
    say(part="lora", **{k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()})
    x = out.get("one_pass_vs_base_x")
    b.goal("8 mixed LoRAs (one pass) / base time", x, "<= 1.5x", x is not None and x <= 1.5, "x")
    x = out.get("peft_mixed_vs_base_x")
    b.goal("8 mixed LoRAs (PEFT adapter_names) / base time", x, "(today)", None, "x")


class _Ids:
    """The tokenizer `generate_texts` needs for prompts given as ids: pad 0, end 2, texts are the ids."""

    pad_token_id, eos_token_id = 0, 2

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(str(int(i)) for i in ids)


def prefix_section(b: Bench) -> None:
    """5. Whole prompts, shared starts once per batch, and starts from the prefix store (module docstring)."""
    from bricks.generation import generate_texts
    from bricks.prefix_cache import PrefixCache

    a, torch = b.args, b.torch
    model = llama(b)
    rows, question = (4, 4) if a.small else (32, 32)
    g = torch.Generator().manual_seed(7)
    draw = lambda n: torch.randint(10, model.config.vocab_size, (n,), generator=g).tolist()  # noqa: E731
    system = draw(a.system_tokens)
    prompts = [system + draw(question) for _ in range(rows)]
    tok, store = _Ids(), PrefixCache(max_bytes=4 * 2**30)

    def run(batch, **kw):
        with torch.inference_mode():
            return generate_texts(model, tok, [""] * len(batch), encoded=batch, max_new_tokens=a.lora_new,
                                  lean_decode=True, row_keys=["base"] * len(batch), **kw)

    plain_texts = run(prompts)
    plain = b.median_ms(lambda: run(prompts), reps=a.reps)
    shared = b.median_ms(lambda: run(prompts, share_prefixes=True), reps=a.reps)
    stored_texts = run(prompts, share_prefixes=True, prefix_cache=store)  # fills the store
    stored = b.median_ms(lambda: run(prompts, share_prefixes=True, prefix_cache=store), reps=a.reps, warm=0)
    lone = b.median_ms(lambda: run(prompts[:1]), reps=a.reps)
    lone_stored = b.median_ms(lambda: run(prompts[1:2], share_prefixes=True, prefix_cache=store), reps=a.reps)
    same = sum(x == y for x, y in zip(plain_texts, stored_texts))
    say(part="prefix", rows=rows, system_tokens=a.system_tokens, question_tokens=question, new=a.lora_new,
        plain_ms=round(plain, 2), shared_ms=round(shared, 2), stored_ms=round(stored, 2),
        shared_x=round(plain / shared, 2), stored_x=round(plain / stored, 2), lone_ms=round(lone, 2),
        lone_stored_ms=round(lone_stored, 2), lone_x=round(lone / lone_stored, 2), same_texts=f"{same}/{rows}",
        store_hits=store.stats.hits, store_mib=round(store.stats.bytes / 2**20, 1))
    b.goal(f"prefix store, batch of {rows}: x whole prompts", plain / stored, "(no goal)", None, "x")


def main(argv=None) -> None:
    args = args_of(argv)
    _stub_packages()
    import torch

    if args.small:
        torch.set_num_threads(1)  # a tiny model: threads only contend (and CI's CPUs are shared)
    b = Bench(args)
    say(device=b.dev, gpu=torch.cuda.get_device_name() if b.dev == "cuda" else None, torch=torch.__version__,
        transformers=__import__("transformers").__version__, peft=_version("peft"), small=args.small,
        budget_s=args.budget_s, bandwidth_gbs=args.bandwidth_gbs)
    for number, section in ((4, ffn_section), (1, decode_sections), (3, lora_section), (5, prefix_section)):
        wanted = number in args.sections or (number == 1 and 2 in args.sections)
        if not wanted:
            continue
        try:
            section(b)
        except Exception as e:  # noqa: BLE001 - a benchmark prints what failed and goes on
            say(part=section.__name__, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        b.free()
    print("== summary (issue #18 goals)", flush=True)
    width = max((len(f) for f, *_ in b.summary), default=10)
    for figure, value, goal, verdict in b.summary:
        print(f"{figure:<{width}}  {value:>12}  {goal:<14}  {verdict}", flush=True)
    say(done=True)


def _version(name: str) -> str | None:
    try:
        return __import__(name).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
