"""`brickwork serve` as a user starts it: a subprocess on a free loopback port, for the tests that need a real
server process. `tests/` is on sys.path (its conftest.py), so tests import this module as `serve_process`."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_serve(args: list[str], env: dict[str, str], output, timeout: float) -> tuple[subprocess.Popen, str]:
    """`python -m orchestrator.cli serve ARGS --port P` with `env` added, its output to `output`; returns the
    process and its URL once /health answers. On failure the process is killed and RuntimeError says so."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "serve", *args, "--port", str(port)], cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env},
                            stdout=output, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError("brickwork serve did not start")
        time.sleep(0.2)


def stop_serve(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Ctrl-C, as a user stops it; killed if it has not ended within `timeout` seconds."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def descendants(pid: int) -> set[int]:
    """The pids of every process below `pid` (from /proc; empty where there is no /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of `pids` still running (zombies count as gone)."""
    out = set()
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(p)
    return out
