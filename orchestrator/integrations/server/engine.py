"""The engine process of `brickwork serve`: the orchestrator and its Runner in a process of their own.

A model's batch is thousands of small torch calls, each of which gives Python's GIL up and takes it back; in the
process that also parses HTTP, every request the event loop handles holds the batch up (toy world, 2 cores, 32
clients: the batch thread ran on 0.81 of a core, the event loop on 0.10, the second core mostly idle). So the
HTTP front (FastAPI, the micro-batcher, metrics) and the engine (model, planner, index) run in two processes,
as vLLM's API server and engine core do, and talk over a pipe (`engine_client` is the front's side):

    front -> engine: ("run", jobs, streaming), ("gone", i), ("admin", op, args), ("close",)
    engine -> front: ("ready", snapshot) | ("failed", error) once; then per batch ("delta", i, text)...,
                     ("done", i, outcome)..., ("result", outcomes (None: sent as "done"), snapshot);
                     per admin call ("admin", value, snapshot)

The pipe is private to the two processes (a socket pair the front made before starting the engine), so the
messages are pickled values of brickwork's own types; errors cross as (class, message) (`pack_error`).
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import logging
import queue
import signal
import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["EngineSettings", "Snapshot", "engine_main", "pack_error", "unpack_error"]

log = logging.getLogger(__name__)

_OWN = ("bricks.", "orchestrator.", "index.", "policies.")


@dataclass(frozen=True)
class EngineSettings:
    """What the engine process opens and how it runs (from the server's config)."""

    model: str | None
    library: str | None
    executor: str
    max_plan_steps: int
    torch_threads: int
    gc_freeze: bool = True
    gc_freeze_after_batches: int = 20
    log_level: int = logging.INFO
    executor_options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """What the front reads of the engine's orchestrator: its executor, whether seeds reproduce, the default
    decoding, the bricks left out of routing, the library's folder and the prefix cache's hits."""

    executor: str
    seedable: bool
    decoding: Any
    excluded: frozenset[str]
    library: str
    prefix_hits: int | None = None
    prefix_hit_tokens: int | None = None


@dataclass(frozen=True)
class PackedError:
    cls: str
    message: str
    api: dict | None = None  # an APIError's status, type, code, param, headers, extra


def pack_error(e: BaseException) -> PackedError:
    """An error as values that cross the pipe whatever its constructor takes."""
    from orchestrator.integrations.server.config import APIError

    cls = type(e)
    message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    api = None
    if isinstance(e, APIError):
        api = {"status": e.status, "type": e.type, "code": e.code, "param": e.param, "headers": e.headers,
               "extra": e.extra}
    return PackedError(f"{cls.__module__}:{cls.__qualname__}", message, api)


def unpack_error(p: PackedError) -> BaseException:
    """The error `pack_error` packed: its own class (brickwork's or a builtin), its message; RuntimeError for a
    class from elsewhere."""
    from orchestrator.integrations.server.config import APIError

    if p.api is not None:
        return APIError(p.api["status"], p.message, type=p.api["type"], code=p.api["code"], param=p.api["param"],
                        headers=p.api["headers"], extra=p.api["extra"])
    module, _, name = p.cls.partition(":")
    cls: Any = None
    if module == "builtins" or module.startswith(_OWN):
        try:
            cls = importlib.import_module(module)
            for part in name.split("."):
                cls = getattr(cls, part)
        except (ImportError, AttributeError):
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        return RuntimeError(f"{p.cls}: {p.message}")
    e = cls.__new__(cls)
    BaseException.__init__(e, p.message)
    return e


def _packed(value: Any) -> Any:
    return pack_error(value) if isinstance(value, BaseException) else value


def snapshot_of(orc) -> Snapshot:
    from orchestrator.integrations.server.runner import supports_seed

    planner = orc.planner
    stats = getattr(getattr(orc.executor, "prefix_cache", None), "stats", None)
    return Snapshot(executor=type(orc.executor).__name__, seedable=supports_seed(orc), decoding=planner.decoding,
                    excluded=frozenset(planner.excluded), library=str(planner.library.path),
                    prefix_hits=getattr(stats, "hits", None), prefix_hit_tokens=getattr(stats, "hit_tokens", None))


class _Engine:
    """The engine's loop: receives on the main thread; batches run one at a time on a worker thread (so that the
    front's "gone" messages reach a batch while it runs); admin calls wait for the running batch."""

    def __init__(self, conn, orc, runner, freezer) -> None:
        self.conn = conn
        self.orc = orc
        self.runner = runner
        self.freezer = freezer
        self._send_lock = threading.Lock()
        self._gone: set[int] = set()
        self._batches: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = threading.Event()
        self._idle.set()

    def send(self, message: tuple) -> None:
        with self._send_lock:
            self.conn.send(message)

    def serve(self) -> None:
        worker = threading.Thread(target=self._work, name="brickwork-batch", daemon=True)
        worker.start()
        self.send(("ready", snapshot_of(self.orc)))
        try:
            while True:
                try:
                    message = self.conn.recv()
                except (EOFError, OSError):  # the front is gone (closed, or killed): so is the engine
                    break
                kind = message[0]
                if kind == "run":
                    self._idle.wait()
                    self._idle.clear()
                    self._gone = set()
                    self._batches.put(message[1:])
                elif kind == "gone":
                    self._gone.add(message[1])
                elif kind == "admin":
                    self._idle.wait()
                    self._admin(*message[1:])
                elif kind == "close":
                    break
        finally:
            self._batches.put(None)
            worker.join()

    def _work(self) -> None:
        while (batch := self._batches.get()) is not None:
            try:
                self._run(*batch)
            finally:
                self._idle.set()

    def _run(self, jobs: list, streaming: list[bool]) -> None:
        def sink(i: int):
            return lambda text: self.send(("delta", i, text))

        early: set[int] = set()

        def done(i: int, outcome) -> None:
            early.add(i)
            self.send(("done", i, outcome))

        jobs = [dataclasses.replace(job, sink=sink(i)) if streaming[i] else job for i, job in enumerate(jobs)]
        try:
            out = self.runner(jobs, gone=self._gone.__contains__, done=done)
        except Exception as e:  # noqa: BLE001 (the batch failed: each job gets the error)
            log.exception("a batch of %d jobs failed", len(jobs))
            out = [e] * len(jobs)
        # the outcomes sent early are not sent again (None in their place)
        self.send(("result", [None if i in early else _packed(o) for i, o in enumerate(out)], snapshot_of(self.orc)))
        if self.freezer is not None:
            self.freezer.batch_done()

    def _admin(self, op: str, args: tuple) -> None:
        try:
            with self.runner.lock:
                brick = getattr(self.orc, f"{op}_brick")(*args)
            value: Any = (brick.id, brick.version) if brick is not None else None
        except Exception as e:  # noqa: BLE001 (the front raises it for the admin request)
            value = pack_error(e)
        self.send(("admin", value, snapshot_of(self.orc)))


def engine_main(conn, settings: EngineSettings) -> None:
    """The engine process: open the orchestrator, say "ready" (or "failed" with the error), then serve batches
    until the front closes the pipe or says "close"."""
    import torch

    from orchestrator.integrations.server.gc_freeze import WarmFreeze

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the front ends the engine
    logging.basicConfig(level=settings.log_level, format="%(levelname)s:%(name)s:%(message)s")
    torch.set_num_threads(settings.torch_threads)
    try:
        from orchestrator.api import Orchestrator
        from orchestrator.integrations.server.runner import Runner

        orc = Orchestrator.from_pretrained(settings.model, settings.library, settings.executor,
                                           **dict(settings.executor_options))
        importlib.import_module("orchestrator.integrations.langchain")  # split_task, not on the first request
        runner = Runner(orc, max_plan_steps=settings.max_plan_steps)
    except BaseException as e:  # noqa: BLE001 (the front shows it in one line)
        conn.send(("failed", pack_error(e)))
        conn.close()
        return
    freezer = WarmFreeze(settings.gc_freeze_after_batches) if settings.gc_freeze else None
    try:
        if freezer is not None:
            freezer.start()
        _Engine(conn, orc, runner, freezer).serve()
    finally:
        if freezer is not None:
            freezer.stop()
        orc.close()
        conn.close()
        gc.collect()
