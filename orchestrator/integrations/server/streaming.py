"""Token streaming for `stream: true`: a job's final step reaches the client as the executor writes it.

    stream = TokenStream(batcher, jobs, stops)
    await stream.start()                 # errors before the first token are ordinary HTTP errors
    async for index, text in stream:     # then (job index, new text) as it comes, and the rest at the end
        ...
    stream.outcomes                      # each job's Outcome once the iteration is over

Each job gets a sink that the batch's thread calls with raw text; `bricks.streaming.DeltaGate` lets through only
text that is sure to be in the final answer. At the end the rest of each final answer is sent, so the chunks
always add up to the answer of the same request without `stream`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Sequence

from bricks.streaming import DeltaGate
from orchestrator.integrations.server.runner import Job, Outcome
from orchestrator.integrations.server.tasks import error_of, finish

__all__ = ["TokenStream"]

log = logging.getLogger(__name__)


class TokenStream:
    """Runs `jobs` through `batcher`, each with a sink, and yields their answers' text as it comes."""

    def __init__(self, batcher, jobs: Sequence[Job], stops: Sequence[str]) -> None:
        self.batcher = batcher
        self.gates = [DeltaGate(stops) for _ in jobs]
        self.stops = list(stops)
        self.jobs = list(jobs)
        self.queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        self.futures: list[asyncio.Future] = []
        self.outcomes: list[Outcome] = []
        self._first: tuple[int, str] | None = None

    def _sink(self, loop: asyncio.AbstractEventLoop, index: int):
        def put(text: str) -> None:
            loop.call_soon_threadsafe(self.queue.put_nowait, (index, text))

        return put

    async def start(self) -> None:
        """Queue the jobs and wait for the first certain text, or the end: an error before any text is raised."""
        loop = asyncio.get_running_loop()
        try:
            for i, job in enumerate(self.jobs):
                self.futures.append(self.batcher.enqueue(dataclasses.replace(job, sink=self._sink(loop, i))))
            while self._first is None and not all(f.done() for f in self.futures):
                getter = asyncio.ensure_future(self.queue.get())
                done, _ = await asyncio.wait({getter, *self.futures}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    index, text = getter.result()
                    delta = self.gates[index].push(text)
                    if delta:
                        self._first = (index, delta)
                else:
                    getter.cancel()
                    self._raise_failed()
            if self._first is None:
                self._raise_failed()
        except BaseException:
            self.cancel()
            raise

    def _raise_failed(self) -> None:
        for f in self.futures:
            if f.done() and not f.cancelled() and f.exception() is not None:
                raise error_of(f.exception())  # type: ignore[arg-type]
            if f.done() and f.cancelled():
                raise error_of(RuntimeError("the job was cancelled"))
            if f.done() and f.result().result.error is not None:
                from orchestrator.integrations.server.tasks import step_error

                raise step_error(f.result().result)

    def cancel(self) -> None:
        """Drop the jobs (those not run yet are skipped; a running batch's results are dropped)."""
        for f in self.futures:
            f.cancel()

    async def __aiter__(self) -> AsyncIterator[tuple[int, str]]:
        try:
            if self._first is not None:
                yield self._first
            while not all(f.done() for f in self.futures) or not self.queue.empty():
                getter = asyncio.ensure_future(self.queue.get())
                pending = {f for f in self.futures if not f.done()}
                done, _ = await asyncio.wait({getter, *pending}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    continue
                index, text = getter.result()
                delta = self.gates[index].push(text)
                if delta:
                    yield index, delta
            self._raise_failed()
            self.outcomes = [f.result() for f in self.futures]
            for i, outcome in enumerate(self.outcomes):
                rest = self.gates[i].rest(finish(outcome, self.stops)[0])
                if rest:
                    yield i, rest
        finally:
            self.cancel()
