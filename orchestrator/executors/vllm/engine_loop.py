"""Continuous batching on vLLM: one thread steps the engine, and requests join the running batch at any time.

`LLM.generate` adds a call's requests and steps the engine until they are done, so a second call waits for the
first. Here every request goes to one loop thread, which adds it to the engine between two steps and resolves
its future when it finishes: requests of concurrent calls (the server's batches, several plans' waves) share
the engine's batches as vLLM's scheduler allows. Everything else that touches the engine runs on the same thread
through `call` (mask registration, adapter removal), or through `call(..., exclusive=True)` once no request is
running (`LLM.generate` for constrained decoding, which would otherwise take other requests' outputs).

A request whose future was cancelled before the loop took it is never added. A request whose `cancelled()`
turns true (its caller went away) is aborted in the engine before the next step, and its future gets the text
written so far. An engine error fails every running request.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from bricks.generation import GeneratedText
from bricks.streaming import TextDeltas, end_tokens

__all__ = ["EngineLoop", "LoopStats"]

log = logging.getLogger(__name__)

_ids = itertools.count()


def _cumulative():
    """vLLM's RequestOutputKind.CUMULATIVE (every output holds all tokens so far); a plain marker without vLLM,
    for fake engines in tests."""
    try:
        from vllm.sampling_params import RequestOutputKind
    except ImportError:
        return "cumulative"
    return RequestOutputKind.CUMULATIVE


@dataclass
class LoopStats:
    """What the loop has done: requests added, those added while others were running (they joined a running
    batch), engine steps, and the most requests running at once."""

    added: int = 0
    joined: int = 0
    aborted: int = 0  # requests whose caller went away while they ran
    steps: int = 0
    peak_running: int = 0


@dataclass
class _Running:
    future: Future
    text: TextDeltas
    on_delta: Callable[[str], None] | None = None
    cancelled: Callable[[], bool] | None = None
    prompt_tokens: int | None = None  # the prompt's token ids, when it was given as ids

    def result(self, written: int | None = None) -> GeneratedText:
        """Its text so far, with the tokens the model wrote (`written`, else those seen) and its prompt's."""
        return GeneratedText(self.text.sent, len(self.text.ids) if written is None else written, self.prompt_tokens)


@dataclass
class _Call:
    fn: Callable[[Any], Any]
    exclusive: bool
    future: Future = field(default_factory=Future)


class EngineLoop:
    """Steps `engine` (vLLM's LLMEngine) on its own thread; `submit` and `call` are safe from any thread."""

    def __init__(self, engine, tokenizer, *, idle_wait_s: float = 0.05) -> None:
        self._engine = engine
        self._tokenizer = tokenizer
        self._ends = end_tokens(getattr(tokenizer, "eos_token_id", None))
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._running: dict[str, _Running] = {}
        self._waiting_calls: list[_Call] = []
        self._idle_wait_s = idle_wait_s
        self._output_kind = _cumulative()
        self._closed = threading.Event()
        self.stats = LoopStats()
        self._thread = threading.Thread(target=self._run, name="brickwork-vllm-engine", daemon=True)
        self._thread.start()

    # -- callers ------------------------------------------------------------------------------------------
    def submit(self, prompt, params, lora=None, on_delta: Callable[[str], None] | None = None,
               cancelled: Callable[[], bool] | None = None) -> Future:
        """Add one request (a vLLM prompt, its SamplingParams, a LoRARequest or None); the future's result is its
        whole text. `on_delta(text)` gets the new text as the engine writes it (called on the loop's thread).
        `cancelled()`, checked before every step, says the caller went away: the request is aborted and the
        future gets the text so far."""
        if self._closed.is_set():
            raise RuntimeError("the vLLM engine loop is closed")
        future: Future = Future()
        self._inbox.put(("add", (prompt, params, lora, on_delta, cancelled, future)))
        return future

    def call(self, fn: Callable[[Any], Any], *, exclusive: bool = False) -> Any:
        """`fn(engine)` run on the loop's thread between two steps (with `exclusive`, once no request is
        running; new requests wait meanwhile); its result, or its exception raised here."""
        if threading.current_thread() is self._thread:
            return fn(self._engine)
        if self._closed.is_set():
            raise RuntimeError("the vLLM engine loop is closed")
        call = _Call(fn, exclusive)
        self._inbox.put(("call", call))
        return call.future.result()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the loop: running requests are aborted and their futures fail."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._inbox.put(("wake", None))
        self._thread.join(timeout)

    # -- the loop thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        pending_adds: list[tuple] = []
        while not self._closed.is_set():
            try:
                self._drain(pending_adds)
                if self._waiting_calls and not self._running:  # exclusive calls run once the engine is idle
                    for call in self._waiting_calls:
                        self._do(call)
                    self._waiting_calls.clear()
                if not self._waiting_calls:
                    for item in pending_adds:
                        self._add(*item)
                    pending_adds.clear()
                if self._running:
                    self._abort_cancelled()
                if self._running:
                    self._step()
            except BaseException as e:  # noqa: BLE001 - an engine failure fails its requests, not the loop
                log.error("vLLM engine loop: %s", e)
                self._fail_running(e)
        self._fail_running(RuntimeError("the vLLM engine loop was closed"))
        for item in pending_adds:
            item[-1].set_exception(RuntimeError("the vLLM engine loop was closed"))
        for call in self._waiting_calls:
            call.future.set_exception(RuntimeError("the vLLM engine loop was closed"))

    def _drain(self, pending_adds: list[tuple]) -> None:
        block = not self._running and not pending_adds and not self._waiting_calls
        while True:
            try:
                kind, payload = self._inbox.get(timeout=self._idle_wait_s) if block else self._inbox.get_nowait()
            except queue.Empty:
                return
            block = False
            if kind == "add":
                pending_adds.append(payload)
            elif kind == "call":
                if payload.exclusive:
                    self._waiting_calls.append(payload)
                else:
                    self._do(payload)

    def _do(self, call: _Call) -> None:
        try:
            call.future.set_result(call.fn(self._engine))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            call.future.set_exception(e)

    def _add(self, prompt, params, lora, on_delta, cancelled, future: Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        if cancelled is not None and cancelled():
            future.set_result("")
            return
        params.output_kind = self._output_kind
        rid = f"brickwork-{next(_ids)}"
        try:
            self._engine.add_request(rid, prompt, params, lora_request=lora)
        except BaseException as e:  # noqa: BLE001 - this request's error (e.g. a LoRA the engine refuses)
            future.set_exception(e)
            return
        self.stats.added += 1
        self.stats.joined += bool(self._running)
        ids = prompt.get("prompt_token_ids") if isinstance(prompt, dict) else None
        self._running[rid] = _Running(future, TextDeltas(self._tokenizer), on_delta, cancelled,
                                      None if ids is None else len(ids))
        self.stats.peak_running = max(self.stats.peak_running, len(self._running))

    def _abort_cancelled(self) -> None:
        gone = [rid for rid, run in self._running.items() if run.cancelled is not None and run.cancelled()]
        if not gone:
            return
        self._engine.abort_request(gone)
        for rid in gone:
            run = self._running.pop(rid)
            if not run.future.done():
                run.future.set_result(run.result())
        self.stats.aborted += len(gone)

    def _step(self) -> None:
        outputs = self._engine.step()
        self.stats.steps += 1
        for out in outputs:
            run = self._running.get(out.request_id)
            if run is None:
                continue
            ids = out.outputs[0].token_ids  # every token so far
            delta = run.text.push(ids[len(run.text.ids):])
            if out.finished:
                delta += run.text.flush()
            if delta and run.on_delta is not None:
                try:
                    run.on_delta(delta)
                except Exception as e:  # noqa: BLE001 - a caller's sink failing fails its own request
                    self._finish(out.request_id, error=e)
                    continue
            if out.finished:
                self._finish(out.request_id, written=self._written(out.outputs[0]))
        if self._running and not self._engine.has_unfinished_requests():
            self._fail_running(RuntimeError("the vLLM engine stopped with requests unfinished"))

    def _written(self, output) -> int:
        """Tokens the model wrote for a finished output, its end token not counted."""
        ids = output.token_ids
        return len(ids) - (1 if ids and getattr(output, "finish_reason", None) == "stop" and ids[-1] in self._ends
                           else 0)

    def _finish(self, rid: str, error: BaseException | None = None, written: int | None = None) -> None:
        run = self._running.pop(rid)
        if error is not None:
            self._engine.abort_request([rid])
            if not run.future.done():
                run.future.set_exception(error)
        elif not run.future.done():
            run.future.set_result(run.result(written))

    def _fail_running(self, error: BaseException) -> None:
        if not self._running:
            return
        try:
            self._engine.abort_request(list(self._running))
        except Exception as e:  # noqa: BLE001 - the engine may be gone
            log.debug("abort after failure: %s", e)
        for run in self._running.values():
            if not run.future.done():
                run.future.set_exception(error)
        self._running.clear()
