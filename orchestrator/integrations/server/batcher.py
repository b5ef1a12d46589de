"""A micro-batcher: requests that arrive together share one call of a batch function, run in a worker thread.

    batcher = MicroBatcher(process, max_batch=32, wait_ms=5, max_queue=256)
    await batcher.start()
    result = await batcher.submit(job)          # Overloaded (429) at once when max_queue jobs are waiting

`process(jobs)` gets a list of jobs and returns one result per job, in order; an entry that is an exception
fails only its own job. Up to `max_concurrent` batches run at once (1 for an executor that runs one call at a time;
more where calls share the engine's running batches, as vLLM's do); while they run, new jobs queue and form the
next batch. A batch is the first waiting job plus whatever else is waiting, and then what arrives
within `wait_ms`, up to `max_batch`, while the batch is smaller than the clients seen: the jobs of the last batch
(their callers may be about to send their next ones) plus those that were already waiting when it ended, less
the callers it answered early (their next jobs may be among those waiting). A lone
caller's job therefore runs at once, and under load the waves of callers merge into full batches. A job whose
caller went away (its future cancelled) before its batch formed is never run; one cancelled while its batch runs
has its result dropped, and with `tell_gone` the batch function is told (`process(jobs, gone=...)`, `gone(i)`)
so that it can stop that job's work. With `early_results`, `process(jobs, done=...)` may answer job i before the
batch ends (`done(i, result)`, from its thread): a one-step task need not wait for a longer plan in its batch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from bricks.errors import ConfigError
from orchestrator.integrations.server.config import APIError, Overloaded

__all__ = ["MicroBatcher", "BatchStats"]

log = logging.getLogger(__name__)

J = TypeVar("J")


@dataclass
class _Item(Generic[J]):
    job: J
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)
    early: bool = False  # its result was handed over before its batch ended


@dataclass
class BatchStats:
    """What the batcher has done so far (for /health and the benchmark)."""

    batches: int = 0
    jobs: int = 0
    dropped: int = 0  # jobs whose caller went away before they ran
    largest: int = 0
    busy_s: float = 0.0

    @property
    def mean_batch(self) -> float:
        return self.jobs / self.batches if self.batches else 0.0


class MicroBatcher(Generic[J]):
    """Collects jobs into batches for `process` (see the module docstring)."""

    def __init__(self, process: Callable[..., Sequence[Any]], *, max_batch: int = 32, wait_ms: float = 5.0,
                 max_queue: int = 256, max_concurrent: int = 1, tell_gone: bool = False, early_results: bool = False,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_batch < 1 or max_queue < 1 or wait_ms < 0 or max_concurrent < 1:
            raise ConfigError(f"max_batch {max_batch}, max_queue {max_queue} and max_concurrent {max_concurrent} must "
                              f"be >= 1, wait_ms {wait_ms} >= 0")
        self.process = process
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000.0
        self.max_queue = max_queue
        self.max_concurrent = max_concurrent
        self.on_batch = on_batch
        self.tell_gone = tell_gone  # process(jobs, gone=...): gone(i) is true once job i's caller went away
        self.early_results = early_results  # process(jobs, done=...): done(i, result) answers job i at once
        self.stats = BatchStats()
        self._items: deque[_Item[J]] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._expected = 1  # callers seen around the last batch: its jobs plus those waiting when it ended

    # -- life cycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self._task is None:
            self._arrived = asyncio.Event()
            self._task = asyncio.create_task(self._loop(), name="brickwork-batcher")

    async def stop(self) -> None:
        """Stop the loop; jobs still waiting fail with 503."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        while self._items:
            item = self._items.popleft()
            if not item.future.done():
                item.future.set_exception(APIError(503, "the server is shutting down", type="server_error",
                                                   code="shutting_down"))

    @property
    def depth(self) -> int:
        """Jobs waiting for a batch."""
        return len(self._items)

    # -- submitting -------------------------------------------------------------------------------------
    def enqueue(self, job: J) -> asyncio.Future:
        """Queue `job` and return the future of its result; Overloaded (429) when the queue is full."""
        if self._arrived is None or self._task is None:
            raise APIError(503, "the server is not accepting requests", type="server_error", code="not_started")
        if len(self._items) >= self.max_queue:  # callers that went away free their places first
            self._items = deque(item for item in self._items if not item.future.done())
        if len(self._items) >= self.max_queue:
            raise Overloaded(len(self._items), self.retry_after())
        future = asyncio.get_running_loop().create_future()
        self._items.append(_Item(job, future))
        self._arrived.set()
        return future

    async def submit(self, job: J) -> Any:
        """Queue `job` and wait for its result (raises its exception). Cancelling the wait drops the job."""
        future = self.enqueue(job)
        try:
            return await future
        finally:
            future.cancel()  # no-op when done; otherwise the job is skipped or its result dropped

    def retry_after(self) -> int:
        """Seconds until the queue has probably drained: waiting batches times the mean batch time, at least 1."""
        per_batch = self.stats.busy_s / self.stats.batches if self.stats.batches else 0.1
        return max(1, math.ceil(self.depth / self.max_batch * per_batch))

    # -- the loop ---------------------------------------------------------------------------------------
    async def _collect(self) -> list[_Item[J]]:
        assert self._arrived is not None
        while not self._items:
            self._arrived.clear()
            await self._arrived.wait()
        batch = [self._items.popleft()]
        deadline = time.perf_counter() + self.wait_s
        while len(batch) < self.max_batch:
            if self._items:
                batch.append(self._items.popleft())
                continue
            if len(batch) >= self._expected:
                break
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        running: set[asyncio.Task] = set()
        try:
            while True:
                while len(running) >= self.max_concurrent:
                    done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                batch = await self._collect()
                live = [item for item in batch if not item.future.done()]
                self.stats.dropped += len(batch) - len(live)
                if live:
                    running.add(asyncio.create_task(self._run_batch(live)))
        finally:
            for task in running:
                task.cancel()

    async def _run_batch(self, live: list[_Item[J]]) -> None:
        t0 = time.perf_counter()
        try:
            kwargs: dict[str, Any] = {}
            if self.tell_gone:
                kwargs["gone"] = lambda i: live[i].future.cancelled()
            if self.early_results:
                loop = asyncio.get_running_loop()

                def done(i: int, result: Any) -> None:  # called from the batch's thread
                    live[i].early = True
                    loop.call_soon_threadsafe(self._resolve, live[i], result)

                kwargs["done"] = done
            results = await asyncio.to_thread(self.process, [item.job for item in live], **kwargs)
            if len(results) != len(live):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} jobs")
        except asyncio.CancelledError:
            for item in live:
                item.future.cancel()
            raise
        except Exception as e:  # noqa: BLE001 (the whole batch failed: each job gets the error)
            log.exception("a batch of %d jobs failed", len(live))
            results = [e] * len(live)
        busy = time.perf_counter() - t0
        early = sum(item.early for item in live)  # callers answered early may already wait again: counted once
        self._expected = len(live) + max(0, len(self._items) - early)
        self.stats.batches += 1
        self.stats.jobs += len(live)
        self.stats.largest = max(self.stats.largest, len(live))
        self.stats.busy_s += busy
        if self.on_batch is not None:
            self.on_batch(len(live), busy)
        for item, result in zip(live, results):
            if not item.early:
                self._resolve(item, result)

    def _resolve(self, item: _Item[J], result: Any) -> None:
        if item.future.done():  # its caller went away while the batch ran
            self.stats.dropped += 1
        elif isinstance(result, BaseException):
            item.future.set_exception(result)
        else:
            item.future.set_result(result)
