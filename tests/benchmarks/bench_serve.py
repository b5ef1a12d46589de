"""Throughput and latency of `brickwork serve` under concurrent clients on loopback.

Starts `python -m orchestrator.cli serve` on the toy world (a subprocess on a free port), then for each level of
concurrency (1, 8, 32, 128 clients at once by default) sends `--requests` chat completions from that many
closed-loop clients (each sends its next request when its answer comes) over HTTP, and prints per level:
requests, errors (non-200 answers, transport failures and wrong answers), requests/s, speedup against one client,
p50 and p99 latency, the mean batch the server formed; and the server's RSS over the run.

    python tests/benchmarks/bench_serve.py [--requests 256] [--clients 1 8 32 128] [--max-batch 32] [--repeat 1]
                                           [--tasks mixed|reverse] [--executor transformers|vllm]
                                           [--compare-concurrent 1 4] [--no-ceiling]
                                           [--engine-process | --in-process] [--compare-engine]

Then one client streams `--stream-requests` answers: time to the first content chunk against time to the whole
answer (medians), chunks per answer, and whether the chunks add up to the right answer.

Goals (issue #17): >= 5x the requests/s of one client at 32 clients; p99 <= 3x p50 at 32 clients; the first token
before the answer is complete.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import ssl
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # serve_process, as the tests import it

from serve_process import descendants, free_port  # noqa: E402

log = logging.getLogger("bench_serve")

WORDS = ["planet", "garden", "silver", "window", "basket", "orange", "purple", "yellow", "candle", "forest", "bridge",
         "castle", "dragon", "flower", "guitar", "hammer", "island", "jacket", "kitten", "monkey", "needle", "pencil"]
# (model, instruction, expected answer of a word): one- and two-step plans, base model and LoRA bricks
TASKS = [("brickwork", "Reverse the text.", lambda w: w[::-1]),
         ("brickwork", "Convert to uppercase.", str.upper),
         ("brickwork", "Reverse the text, then convert to uppercase.", lambda w: w[::-1].upper()),
         ("brick:caesar", "Apply a Caesar shift of one.",
          lambda w: "".join(chr((ord(c) - 97 + 1) % 26 + 97) for c in w)),
         ("brickwork", "Double every letter.", lambda w: "".join(c + c for c in w))]


def _family(pid: int) -> list[int]:
    """`pid` and its descendants (the server's engine process)."""
    return [pid, *descendants(pid)]


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process and its descendants have used so far."""
    total = 0.0
    try:
        for p in _family(pid):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total
    except (OSError, IndexError, ValueError):
        return float("nan")


def _rss_mib(pid: int) -> float:
    """Resident memory of a process and its descendants."""
    total = 0.0
    try:
        for p in _family(pid):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        return total
    except OSError:
        return float("nan")


class RssSampler(threading.Thread):
    """Samples a process's resident memory every `every` seconds."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.samples, self.done = pid, every, [], threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append(_rss_mib(self.pid))
            self.done.wait(self.every)


def start_server(args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "orchestrator.cli", "serve", "--port", str(port), "--log-level", "warning",
           "--max-batch", str(args.max_batch), "--batch-wait-ms", str(args.batch_wait_ms), "--max-queue", "4096",
           "--executor", args.executor, "--concurrent-batches", str(args.concurrent_batches)]
    if args.torch_threads:
        cmd += ["--torch-threads", str(args.torch_threads)]
    if args.engine_process:
        cmd += ["--engine-process"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "BRICKWORK_API_KEY": "bench"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600  # vLLM compiles its model first
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start")


async def level(url: str, clients: int, requests: int, time_limit: float, tasks: list = TASKS,
                server_pid: int | None = None) -> dict:
    """`requests` chat completions from `clients` closed-loop clients; latencies and errors (and the server's
    CPU time per request, given its pid)."""
    latencies: list[float] = []
    by_task: dict[int, list[float]] = {}
    errors = {"http": 0, "transport": 0, "wrong": 0}
    counter = iter(range(requests))
    headers = {"Authorization": "Bearer bench"}
    stop_at = time.perf_counter() + time_limit
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, headers=headers, timeout=120))
        # each client a connection of its own (one shared pool of 128 took 10 ms of client CPU a request), opened
        # before the clock starts: the timed part is the steady state, not 128 connections being set up
        tls = ssl.create_default_context()  # one for all: each client loading the CA bundle took ~75 ms
        own = [await stack.enter_async_context(httpx.AsyncClient(base_url=url, headers=headers, timeout=120,
                                                                 verify=tls)) for _ in range(clients)]
        await asyncio.gather(*(c.get("/health") for c in own))

        async def loop(http: httpx.AsyncClient) -> None:
            for i in counter:
                if time.perf_counter() > stop_at:
                    return
                model, instruction, answer = tasks[i % len(tasks)]
                word = WORDS[(i // len(tasks)) % len(WORDS)]
                body = {"model": model, "messages": [{"role": "user", "content": f"{instruction}\nInput: {word}"}]}
                t0 = time.perf_counter()
                try:
                    r = await http.post("/v1/chat/completions", json=body)
                except httpx.HTTPError as e:
                    errors["transport"] += 1
                    log.info("transport error after %.2f s: %s: %r", time.perf_counter() - (stop_at - time_limit),
                             type(e).__name__, e)
                    continue
                latencies.append(time.perf_counter() - t0)
                by_task.setdefault(i % len(tasks), []).append(latencies[-1])
                if r.status_code != 200:
                    errors["http"] += 1
                elif r.json()["choices"][0]["message"]["content"] != answer(word):
                    errors["wrong"] += 1

        before = (await http.get("/health")).json()
        cpu0 = _cpu_s(server_pid) if server_pid else float("nan")
        t0 = time.perf_counter()
        await asyncio.gather(*(loop(c) for c in own))
        wall = time.perf_counter() - t0
        cpu = (_cpu_s(server_pid) if server_pid else float("nan")) - cpu0
        after = (await http.get("/health")).json()
    batches = after["batches"] - before["batches"]
    done = len(latencies)
    q = statistics.quantiles(latencies, n=100, method="inclusive") if done >= 2 else [float("nan")] * 99
    return {"clients": clients, "requests": done, "errors": errors, "rps": done / wall if wall else 0.0,
            "p50": q[49] * 1000, "p99": q[98] * 1000, "batches": batches, "wall": wall,
            "cpu_ms": cpu * 1000 / done if done else float("nan"), "cores": cpu / wall if wall else float("nan"),
            "mean_batch": done / batches if batches else float("nan"),
            "task_ms": {t: (statistics.median(v) * 1000, max(v) * 1000) for t, v in sorted(by_task.items())}}


async def streaming(url: str, requests: int) -> dict:
    """One client, `requests` streamed chat completions (one- and two-step plans): when the first content chunk
    arrives and when the answer is complete, and whether the chunks add up to the right answer."""
    import json

    first, total, chunks, wrong = [], [], [], 0
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": "Bearer bench"}, timeout=120) as http:
        for i in range(requests):
            _, instruction, answer = TASKS[[0, 2, 4][i % 3]]  # reverse; reverse then uppercase; double (brickwork)
            word = WORDS[i % len(WORDS)]
            body = {"model": "brickwork", "stream": True,
                    "messages": [{"role": "user", "content": f"{instruction}\nInput: {word}"}]}
            t0, t_first, text, n = time.perf_counter(), None, "", 0
            async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    for choice in json.loads(line[6:]).get("choices", []):
                        piece = (choice.get("delta") or {}).get("content") or ""
                        if piece:
                            t_first = t_first or time.perf_counter() - t0
                            text, n = text + piece, n + 1
            total.append(time.perf_counter() - t0)
            first.append(t_first if t_first is not None else total[-1])
            chunks.append(n)
            wrong += text != answer(word)
    return {"requests": requests, "first_ms": statistics.median(first) * 1000,
            "total_ms": statistics.median(total) * 1000, "chunks": statistics.mean(chunks), "wrong": wrong,
            "earlier": sum(f < t * 0.9 for f, t in zip(first, total))}


def warm_up(url: str) -> None:
    """Requests until the server is in its steady state: adapters loaded, merges and prefixes cached, and its
    garbage collector's second freeze done (after `ServerConfig.gc_freeze_after_batches`, 20), which would
    otherwise stop the first level measured for ~0.1 s."""
    asyncio.run(level(url, 4, 120, 60))


def ceiling(tasks: list, rows: int = 320, threads: int | None = None) -> tuple[float, float]:
    """Rows/s of the same tasks run by an Orchestrator in this process, one at a time and 32 at a time, with the
    server's torch threads."""
    import torch

    from orchestrator import Orchestrator
    from orchestrator.integrations.server.config import ServerConfig

    torch.set_num_threads(ServerConfig(torch_threads=threads).threads())

    jobs = [{"instruction": tasks[i % len(tasks)][1], "input": WORDS[(i // len(tasks)) % len(WORDS)]}
            for i in range(rows)]
    with Orchestrator.from_pretrained() as orc:
        orc.run_batch(jobs[:64])  # warm-up
        rates = []
        for size, count in ((1, rows // 4), (32, rows)):
            t0 = time.perf_counter()
            for j in range(0, count, size):
                orc.run_batch(jobs[j:j + size])
            rates.append(count / (time.perf_counter() - t0))
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=256, help="Requests per level of concurrency.")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--executor", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--concurrent-batches", type=int, default=4,
                        help="Batches running at once on vLLM (the transformers executor runs one at a time).")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="The server's torch CPU threads (default: the server's own, all cores but one).")
    parser.add_argument("--time-limit", type=float, default=90.0, help="Seconds per level, at most.")
    parser.add_argument("--tasks", choices=["mixed", "reverse"], default="mixed",
                        help="mixed: one- and two-step plans, base model and LoRA bricks; reverse: one step, "
                             "base model (one configuration: batching alone, no switching between adapters).")
    parser.add_argument("--repeat", type=int, default=1,
                        help="Run the sweep this many times; report each level's best run (other load on the machine "
                             "only slows runs down).")
    parser.add_argument("--compare-concurrent", type=int, nargs="*", default=[],
                        help="Then, for each N given, a fresh server with --concurrent-batches N serves the largest "
                             "--clients level (vLLM: batches that run at once, side by side).")
    parser.add_argument("--engine-process", action=argparse.BooleanOptionalAction, default=False,
                        help="The model in a process of its own (default: in the HTTP process, as the server's).")
    parser.add_argument("--compare-engine", action="store_true",
                        help="Then a fresh server with the model placed the other way (--engine-process against "
                             "--in-process) serves the same --clients levels, side by side.")
    parser.add_argument("--ceiling", action=argparse.BooleanOptionalAction, default=True,
                        help="After the server stops, run the same tasks in this process (no HTTP) one at a time and "
                             "in batches of 32: the most batching can give on this machine.")
    parser.add_argument("--stream-requests", type=int, default=60,
                        help="Streamed requests from one client, timed to the first token and to the end (0: none).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    proc, url = start_server(args)
    sampler = RssSampler(proc.pid)
    sampler.start()
    try:
        rss_start = _rss_mib(proc.pid)
        warm_up(url)
        rss_warm = _rss_mib(proc.pid)
        tasks = TASKS if args.tasks == "mixed" else TASKS[:1]
        runs = [[asyncio.run(level(url, c, max(args.requests, c), args.time_limit, tasks, proc.pid))
                 for c in args.clients]
                for _ in range(max(1, args.repeat))]
        rows = [max((run[i] for run in runs), key=lambda r: r["rps"]) for i in range(len(args.clients))]
        streamed = asyncio.run(streaming(url, args.stream_requests)) if args.stream_requests else None
        rss_end = _rss_mib(proc.pid)
    finally:
        sampler.done.set()
        proc.terminate()
        proc.wait(30)
    base = rows[0]["rps"] if rows and rows[0]["clients"] == 1 else None
    paired = []  # each sweep's own 32-client / one-client ratio: the machine's drift between sweeps cancels out
    if base and 32 in args.clients:
        paired = [run[args.clients.index(32)]["rps"] / run[0]["rps"] for run in runs]
    log.info("%7s %8s %7s %9s %8s %9s %9s %7s %10s %14s", "clients", "requests", "errors", "req/s", "speedup",
             "p50 ms", "p99 ms", "p99/p50", "mean batch", "server CPU/req")
    for r in rows:
        speed = f"{r['rps'] / base:.1f}x" if base else "-"
        errs = sum(r["errors"].values())
        log.info("%7d %8d %7d %9.1f %8s %9.1f %9.1f %7.2f %10.1f %7.2f ms %4.2f cores", r["clients"], r["requests"],
                 errs, r["rps"], speed, r["p50"], r["p99"], r["p99"] / r["p50"], r["mean_batch"], r["cpu_ms"],
                 r["cores"])
        if errs:
            log.info("        errors at %d clients: %s", r["clients"], r["errors"])
        log.info("        p50 / max ms by task: %s", "; ".join(
            f"{TASKS[t][1][:24]!r} {p50:.0f} / {top:.0f}" for t, (p50, top) in r["task_ms"].items()))
    samples = [s for s in sampler.samples if s == s]
    log.info("server RSS: start %.0f MiB, after the warm-up %.0f MiB, end %.0f MiB, peak %.0f MiB (%d samples)",
             rss_start, rss_warm, rss_end, max(samples) if samples else float("nan"), len(samples))
    if streamed:
        log.info("streaming, one client, %d requests: first token p50 %.1f ms, whole answer p50 %.1f ms (%.2f); "
                 "%.1f content chunks per answer; first token before 90%% of the answer's time in %d/%d; wrong %d",
                 streamed["requests"], streamed["first_ms"], streamed["total_ms"],
                 streamed["first_ms"] / streamed["total_ms"], streamed["chunks"], streamed["earlier"],
                 streamed["requests"], streamed["wrong"])
    for n in args.compare_concurrent:
        clients = max(args.clients)
        other = argparse.Namespace(**{**vars(args), "concurrent_batches": n})
        proc, url = start_server(other)
        try:
            warm_up(url)
            r = asyncio.run(level(url, clients, max(args.requests, clients), args.time_limit,
                                  TASKS if args.tasks == "mixed" else TASKS[:1]))
        finally:
            proc.terminate()
            proc.wait(60)
        log.info("--concurrent-batches %d, %d clients: %.1f req/s, p50 %.1f ms, p99 %.1f ms, mean batch %.1f, "
                 "errors %d", n, clients, r["rps"], r["p50"], r["p99"], r["mean_batch"], sum(r["errors"].values()))
    if args.compare_engine:
        other = argparse.Namespace(**{**vars(args), "engine_process": not args.engine_process})
        proc, url = start_server(other)
        try:
            warm_up(url)
            tasks = TASKS if args.tasks == "mixed" else TASKS[:1]
            alone = [[asyncio.run(level(url, c, max(args.requests, c), args.time_limit, tasks, proc.pid))
                      for c in args.clients] for _ in range(max(1, args.repeat))]
        finally:
            proc.terminate()
            proc.wait(60)
        alone_rows = [max((run[i] for run in alone), key=lambda r: r["rps"]) for i in range(len(args.clients))]
        alone_base = alone_rows[0]["rps"] if alone_rows[0]["clients"] == 1 else None
        for r, e in zip(alone_rows, rows):
            log.info("%s, %3d clients: %.1f req/s (%s one client), p50 %.1f ms, p99 %.1f ms, %.2f ms CPU/req, "
                     "errors %d; the first server / this one: %.2fx req/s",
                     "--in-process" if args.engine_process else "--engine-process", r["clients"], r["rps"],
                     f"{r['rps'] / alone_base:.2f}x" if alone_base else "-", r["p50"], r["p99"], r["cpu_ms"],
                     sum(r["errors"].values()), e["rps"] / r["rps"])
    if args.ceiling:
        one, batched = ceiling(TASKS if args.tasks == "mixed" else TASKS[:1], threads=args.torch_threads)
        log.info("in process, no HTTP, the server's torch threads: %.1f rows/s one at a time, %.1f rows/s in batches "
                 "of 32: %.1fx", one, batched, batched / one)
    at32 = next((r for r in rows if r["clients"] == 32), None)
    if at32 and base:
        log.info("goals at 32 clients: throughput %.2fx one client (goal >= 5x): %s; p99/p50 %.2f (goal <= 3): %s",
                 at32["rps"] / base, "met" if at32["rps"] / base >= 5 else "NOT met", at32["p99"] / at32["p50"],
                 "met" if at32["p99"] / at32["p50"] <= 3 else "NOT met")
    if len(paired) > 1:
        log.info("each sweep's own ratio at 32 clients: %s; median %.2fx, lowest %.2fx",
                 ", ".join(f"{x:.2f}x" for x in paired), statistics.median(paired), min(paired))


if __name__ == "__main__":
    main()
