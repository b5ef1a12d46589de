"""The front's side of the engine process (`engine.py`): start it, run batches and admin calls on it, and read
what the app needs of its orchestrator.

    view = start_engine(config)     # EngineView; raises the engine's startup error (a bad model folder, ...)
    runner = view.runner            # the batch function, as Runner: runner(jobs, gone=..., done=...)
    view.close()

A job's `sink` stays in the front (the engine sends its text); `gone(i)` is polled while the batch runs and told
to the engine once true; `done(i, outcome)` is called as the engine's early outcomes arrive. Calls run one at a
time. If the engine process dies, the running batch and every later one fail with 503 `engine_down`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from orchestrator.integrations.server.config import APIError, ServerConfig
from orchestrator.integrations.server.engine import EngineSettings, PackedError, Snapshot, engine_main, unpack_error
from orchestrator.integrations.server.runner import BatchLock, Job, Outcome

__all__ = ["EngineView", "RemoteRunner", "start_engine"]

log = logging.getLogger(__name__)

POLL_S = 0.005  # how often a running batch looks whether a caller went away


def _down(code: int | None) -> APIError:
    return APIError(503, f"the engine process is not running (exit code {code}); restart the server",
                    type="server_error", code="engine_down")


@contextlib.contextmanager
def _thread_pools(threads: int):
    """The environment a started process inherits: OpenMP, OpenBLAS and MKL pools of `threads`, unless the user
    set them (FAISS's and numpy's pools of every core spun against torch's: 17.3 instead of 13.9 ms of engine CPU
    a request, toy world, one client)."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    added = [name for name in names if name not in os.environ]
    for name in added:
        os.environ[name] = str(threads)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


class _Engine:
    """The engine process and its end of the pipe; one conversation at a time."""

    def __init__(self, settings: EngineSettings) -> None:
        ctx = multiprocessing.get_context("spawn")  # not fork: the front has threads
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=engine_main, args=(child, settings), name="brickwork-engine", daemon=True)
        with _thread_pools(settings.torch_threads):
            self.process.start()
        child.close()
        self._lock = threading.Lock()

    def receive(self, timeout: float | None = None):
        """The next message, or None after `timeout` seconds; 503 once the process has exited."""
        ready = wait([self.conn, self.process.sentinel], timeout)
        if self.conn in ready:
            try:
                return self.conn.recv()
            except (EOFError, OSError):
                pass
        elif not ready:
            return None
        self.process.join(5)
        raise _down(self.process.exitcode)

    def call(self, message: tuple, expect: str):
        with self._lock:
            self.send(message)
            reply = self.receive()
            if reply[0] != expect:
                raise RuntimeError(f"engine answered {reply[0]!r} to {message[0]!r}")
            return reply

    def send(self, message: tuple) -> None:
        if not self.process.is_alive():
            raise _down(self.process.exitcode)
        try:
            self.conn.send(message)
        except (BrokenPipeError, OSError):
            raise _down(self.process.exitcode) from None

    def close(self, timeout: float = 30) -> None:
        if self.process.is_alive():
            try:
                with self._lock:  # after a running batch
                    self.conn.send(("close",))
            except OSError:
                pass
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self.conn.close()


def _value(v: Any) -> Any:
    if isinstance(v, PackedError):
        return unpack_error(v)
    return v


class RemoteRunner:
    """The server's batch function over the engine process (the in-process `Runner`'s interface)."""

    concurrent = False  # the engine runs one batch at a time

    def __init__(self, engine: _Engine, view: "EngineView") -> None:
        self.engine = engine
        self.orc = view
        self.lock = BatchLock()  # batches share it; admin calls hold it alone

    def __call__(self, jobs: Sequence[Job], gone: Callable[[int], bool] | None = None,
                 done: Callable[[int, Outcome], None] | None = None) -> list[Outcome | BaseException]:
        streaming = [job.sink is not None for job in jobs]
        wire = [dataclasses.replace(job, sink=None) for job in jobs]
        told: set[int] = set()
        early: dict[int, Outcome] = {}
        with self.lock.shared(), self.engine._lock:
            self.engine.send(("run", wire, streaming))
            while True:
                message = self.engine.receive(POLL_S)
                if gone is not None:
                    for i in range(len(jobs)):
                        if i not in told and gone(i):
                            told.add(i)
                            self.engine.send(("gone", i))
                if message is None:
                    continue
                kind = message[0]
                if kind == "delta":
                    jobs[message[1]].sink(message[2])  # type: ignore[misc]
                elif kind == "done":
                    early[message[1]] = message[2]
                    if done is not None:
                        done(message[1], message[2])
                elif kind == "result":
                    self.orc.follow(message[2])
                    return [early[i] if v is None else _value(v) for i, v in enumerate(message[1])]


class EngineView:
    """What the app reads of an orchestrator that runs in the engine process: its planner's library (read here
    from the same folder), default decoding and left-out bricks; the executor's name; the brick changes of the
    admin routes, made there."""

    def __init__(self, engine: _Engine, snapshot: Snapshot) -> None:
        from orchestrator.factory import open_library

        self._engine = engine
        self.snapshot = snapshot
        self.planner = SimpleNamespace(library=open_library(Path(snapshot.library)), decoding=snapshot.decoding,
                                       excluded=snapshot.excluded)
        self.runner = RemoteRunner(engine, self)

    @property
    def executor_name(self) -> str:
        return self.snapshot.executor

    @property
    def seedable(self) -> bool:
        return self.snapshot.seedable

    def follow(self, snapshot: Snapshot) -> None:
        """Take the engine's latest snapshot, and the library as it is on disk now (`Library.refresh` reads it
        again only when it changed)."""
        self.snapshot = snapshot
        self.planner.excluded = snapshot.excluded
        self.planner.library.refresh()

    def _admin(self, op: str, *args: Any):
        _, value, snapshot = self._engine.call(("admin", op, args), "admin")
        self.follow(snapshot)
        if isinstance(value, PackedError):
            raise unpack_error(value)
        return None if value is None else SimpleNamespace(id=value[0], version=value[1])

    def add_brick(self, source):
        return self._admin("add", str(source))

    def update_brick(self, source):
        return self._admin("update", str(source))

    def rollback_brick(self, brick_id: str, to: int | None = None):
        return self._admin("rollback", brick_id, to)

    def remove_brick(self, brick_id: str, version: int | None = None):
        return self._admin("remove", brick_id, version)

    def close(self) -> None:
        self._engine.close()


def start_engine(config: ServerConfig, *, timeout: float = 900) -> EngineView:
    """Start the engine process for `config` and wait until its orchestrator is open; its startup error (as the
    in-process orchestrator would raise it) otherwise."""
    settings = EngineSettings(model=None if config.model is None else str(config.model),
                              library=None if config.library is None else str(config.library),
                              executor=config.executor, max_plan_steps=config.max_plan_steps,
                              torch_threads=config.threads(), gc_freeze=config.gc_freeze,
                              gc_freeze_after_batches=config.gc_freeze_after_batches,
                              log_level=logging.getLogger("orchestrator").getEffectiveLevel(),
                              executor_options=tuple(sorted(config.executor_options().items())))
    engine = _Engine(settings)
    deadline = time.monotonic() + timeout
    try:
        while True:
            message = engine.receive(max(0.0, deadline - time.monotonic()))
            if message is None:
                raise APIError(503, f"the engine process did not start within {timeout:.0f} s", type="server_error",
                               code="engine_down")
            if message[0] == "failed":
                raise unpack_error(message[1])
            if message[0] == "ready":
                log.info("engine process %d ready (%s)", engine.process.pid, message[1].executor)
                return EngineView(engine, message[1])
    except BaseException:
        engine.close(5)
        raise
