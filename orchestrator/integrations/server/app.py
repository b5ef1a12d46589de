"""The FastAPI app of `brickwork serve`: OpenAI-compatible chat and text completions over an Orchestrator.

    from orchestrator.integrations.server import ServerConfig, create_app
    app = create_app(ServerConfig(api_key="..."))          # opens the toy world when the app starts
    # uvicorn.run(app, host="127.0.0.1", port=8000)

Every completion request becomes a runner job; the micro-batcher gathers the jobs that arrive together and
runs them in one shared `Orchestrator.run_plans`. A failed step is an error response naming the step.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

try:
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover (part of the serve extra)
    from bricks.errors import MissingExtraError

    raise MissingExtraError("the HTTP server needs fastapi and uvicorn: pip install 'brickwork[serve]'") from e

from bricks.errors import BrickworkError
from orchestrator.integrations.server.admin import admin_router
from orchestrator.integrations.server.batcher import MicroBatcher
from orchestrator.integrations.server.config import APIError, ServerConfig
from orchestrator.integrations.server.gc_freeze import WarmFreeze
from orchestrator.integrations.server.metrics import ServerMetrics, prefix_cache_hits
from orchestrator.integrations.server.middleware import BodyLimit, RequestMetrics, bearer_check
from orchestrator.integrations.server.runner import Job, Outcome, Runner
from orchestrator.integrations.server.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    Health,
    ModelCard,
    ModelList,
)
from orchestrator.integrations.server.streaming import TokenStream
from orchestrator.integrations.server.tasks import (
    BRICK_PREFIX,
    PLANNER_MODEL,
    chat_task,
    check_supported,
    decoding_for,
    error_of,
    finish,
    info_of,
    make_job,
    prompt_task,
    step_error,
    stops_of,
    usage_of,
)

__all__ = ["create_app", "ServerState"]

log = logging.getLogger(__name__)

_RUN = os.urandom(8).hex()  # this process's part of response ids
_SERIAL = itertools.count()


def _response_id() -> str:
    """A response id unique to this server run (no system call on the event loop, as uuid4 would make)."""
    return f"{_RUN}{next(_SERIAL):08x}"


class ServerState:
    """What the app's routes share: settings, the orchestrator, its runner and batcher, and the metrics."""

    def __init__(self, config: ServerConfig, orchestrator=None) -> None:
        self.config = config
        self.orc = orchestrator
        self.owns_orc = orchestrator is None
        self.metrics = ServerMetrics()
        self.runner: Runner | None = None
        self.batcher: MicroBatcher | None = None
        self.freezer = WarmFreeze(config.gc_freeze_after_batches) if config.gc_freeze else None

    async def open(self) -> None:
        c = self.config
        if self.orc is None and c.uses_engine_process():
            from orchestrator.integrations.server.engine_client import start_engine

            self.orc = await asyncio.to_thread(start_engine, c)
        elif self.orc is None:
            from orchestrator.api import Orchestrator

            self.orc = await asyncio.to_thread(lambda: Orchestrator.from_pretrained(c.model, c.library, c.executor,
                                                                                    **c.executor_options()))
        remote = getattr(self.orc, "runner", None)  # an EngineView: batches run in the engine process
        if remote is None:
            await asyncio.to_thread(importlib.import_module, "orchestrator.integrations.langchain")  # not on a request
        self.runner = remote if remote is not None else Runner(self.orc, max_plan_steps=c.max_plan_steps)
        self.batcher = MicroBatcher(self.runner, max_batch=self.config.max_batch, wait_ms=self.config.batch_wait_ms,
                                    max_queue=self.config.max_queue, on_batch=self._after_batch,
                                    max_concurrent=self.config.concurrent_batches if self.runner.concurrent else 1,
                                    tell_gone=True, early_results=True)
        if self.freezer is not None:
            self.freezer.start()
        await self.batcher.start()

    def _after_batch(self, size: int, seconds: float) -> None:
        self.metrics.observe_batch(size, seconds)
        if self.freezer is not None:
            self.freezer.batch_done()

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        if self.freezer is not None:
            self.freezer.stop()
        if self.owns_orc and self.orc is not None:
            lock = self.runner.lock if self.runner is not None else None
            held = lock is not None and await asyncio.to_thread(lock.acquire, True, 30)  # a running batch ends first
            try:
                self.orc.close()
            finally:
                if held:
                    lock.release()  # type: ignore[union-attr]

    async def run(self, request: Request, jobs: list[Job]) -> list[Outcome]:
        """Queue `jobs` and wait for all their outcomes; a client that goes away cancels them (not run)."""
        assert self.batcher is not None
        futures: list[asyncio.Future] = []
        try:
            for job in jobs:
                futures.append(self.batcher.enqueue(job))
            pending: set[asyncio.Future] = set(futures)
            while pending:
                watcher = asyncio.ensure_future(request.receive())
                done, _ = await asyncio.wait({*pending, watcher}, return_when=asyncio.FIRST_COMPLETED)
                pending -= done
                if watcher in done:
                    gone = watcher.exception() is not None or watcher.result().get("type") == "http.disconnect"
                    if gone:
                        self.metrics.disconnects.inc()
                        raise APIError(499, "the client closed the request", code="client_disconnected")
                else:
                    watcher.cancel()
                for future in done & set(futures):
                    if future.cancelled():
                        raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down")
                    if future.exception() is not None:
                        raise error_of(future.exception())  # type: ignore[arg-type]
            return [f.result() for f in futures]
        finally:
            for future in futures:
                future.cancel()  # a no-op for finished ones; the others are skipped or their results dropped

    def record(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            self.metrics.observe_result(o.result, o.prompt_tokens, o.completion_tokens)


def _error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _validation_error(e: RequestValidationError) -> APIError:
    errors = e.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if first.get("type") == "json_invalid":
        return APIError(400, f"the request body is not valid JSON ({first.get('ctx', {}).get('error', '')})",
                        code="invalid_json")
    if first.get("type") == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {'.'.join(loc)}", param=".".join(loc),
                        code="unrecognized_argument")
    message = "; ".join(f"{'.'.join(str(x) for x in err.get('loc', ()) if x != 'body') or 'body'}: {err.get('msg')}"
                        for err in errors[:5])
    return APIError(400, f"invalid request: {message}", param=".".join(loc) or None, code="invalid_value")


def _created(manifest) -> int:
    try:
        return int(datetime.fromisoformat(str(manifest.created)).timestamp())
    except (TypeError, ValueError):
        return 0


def _json(model) -> Response:
    """A response model as JSON (serialized by pydantic-core, not FastAPI's generic encoder)."""
    return Response(model.model_dump_json(), media_type="application/json")


def _sse(model) -> str:
    return f"data: {model.model_dump_json(exclude_none=False)}\n\n"


def create_app(config: ServerConfig | None = None, orchestrator=None, *, close_orchestrator: bool = False) -> FastAPI:
    """The app; `orchestrator` (an open Orchestrator) is used as is (and closed at shutdown with
    `close_orchestrator`), else one is opened from `config` at startup and closed at shutdown."""
    config = config or ServerConfig()
    state = ServerState(config, orchestrator)
    state.owns_orc = state.owns_orc or close_orchestrator

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.open()
        try:
            yield
        finally:
            await state.close()

    app = FastAPI(title="brickwork", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.brickwork = state
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=state.metrics)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return _error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return _error_response(_validation_error(e))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        return _error_response(APIError(e.status_code, str(e.detail), type=kind, code=str(e.status_code)))

    @app.exception_handler(BrickworkError)
    async def _brickwork_error(request: Request, e: BrickworkError) -> JSONResponse:
        return _error_response(error_of(e))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s", request.url.path)
        return _error_response(error_of(e))

    api_key = Depends(bearer_check(lambda: config.api_key, "API key"))

    def orc():
        return state.orc

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        """Liveness and load; needs no key."""
        b = state.batcher
        import torch

        executor = getattr(state.orc, "executor", None)  # None: the model runs in the engine process
        loop = getattr(executor, "loop_stats", None)
        engine = getattr(state.orc, "snapshot", None)
        hits, hit_tokens = prefix_cache_hits(state.orc)
        return Health(executor=getattr(state.orc, "executor_name", None) or type(executor).__name__,
                      bricks=len(state.orc.planner.library.list()), engine_process=engine is not None,
                      queued=b.depth if b else 0, batches=b.stats.batches if b else 0,
                      mean_batch=round(b.stats.mean_batch, 3) if b else 0.0,
                      busy_s=round(b.stats.busy_s, 3) if b else 0.0,
                      concurrent_batches=b.max_concurrent if b else 1,
                      engine_joined=getattr(loop, "joined", None), dropped=b.stats.dropped if b else 0,
                      engine_aborted=getattr(loop, "aborted", None), torch_threads=torch.get_num_threads(),
                      gc_frozen=state.freezer.frozen if state.freezer else 0,
                      prefix_cache_hits=hits, prefix_cache_hit_tokens=hit_tokens)

    @app.get("/metrics", dependencies=[api_key])
    async def metrics() -> Response:
        """Prometheus text: requests, errors, latency, tokens, steps, brick uses, batches, queue depth."""
        state.metrics.queued.set(state.batcher.depth if state.batcher else 0)
        hits, hit_tokens = prefix_cache_hits(state.orc)
        state.metrics.prefix_hits.set(hits or 0)
        state.metrics.prefix_hit_tokens.set(hit_tokens or 0)
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @app.get("/v1/models", response_model=ModelList, dependencies=[api_key])
    async def models() -> ModelList:
        """`brickwork` (plan and run), and `brick:<id>` and `brick:<id>@<version>` for each active brick."""
        planner = orc().planner
        cards = [ModelCard(id=PLANNER_MODEL, created=0)]
        for brick in planner.library.list():
            if brick.key in planner.excluded:
                continue
            created = _created(brick.manifest)
            cards += [ModelCard(id=f"{BRICK_PREFIX}{brick.id}", created=created),
                      ModelCard(id=f"{BRICK_PREFIX}{brick.key}", created=created)]
        return ModelList(data=cards)

    @app.post("/v1/chat/completions", dependencies=[api_key], response_model=None)
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response:
        """OpenAI's chat completions: the last user message is the instruction."""
        check_supported(req)
        decoding = decoding_for(req, orc().planner.decoding, config)
        stops = stops_of(req)
        task = ("", "") if req.plan is not None else chat_task(req.messages, req.input)
        job = make_job(orc(), req, task, config, decoding)
        rid, created = f"chatcmpl-{_response_id()}", int(time.time())
        if req.stream:
            stream = TokenStream(state.batcher, [job], stops)
            await stream.start()  # an error before the first token is an ordinary error response
            with_usage = bool(req.stream_options and req.stream_options.include_usage)

            def chunk(delta: dict | None, finish_reason=None, **extra) -> str:
                choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
                return _sse(ChatCompletionChunk.model_validate({"id": rid, "created": created, "model": req.model,
                                                                "choices": choices, **extra}))

            async def events() -> AsyncIterator[str]:
                yield chunk({"role": "assistant", "content": ""})
                try:
                    async for _, text in stream:
                        yield chunk({"content": text})
                except APIError as e:  # after the first token: an error event, as OpenAI streams them
                    yield f"data: {json.dumps(e.body())}\n\n"
                    return
                outcome = stream.outcomes[0]
                state.record([outcome])
                yield chunk({}, finish(outcome, stops)[1], brickwork=info_of(outcome.result))
                if with_usage:
                    yield chunk(None, usage=usage_of([outcome]))
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        outcome = (await state.run(request, [job]))[0]
        if outcome.result.error is not None:
            raise step_error(outcome.result)
        state.record([outcome])
        text, reason = finish(outcome, stops)
        return _json(ChatCompletion.model_validate({
            "id": rid, "created": created, "model": req.model, "usage": usage_of([outcome]),
            "brickwork": info_of(outcome.result),
            "choices": [{"index": 0, "message": {"content": text}, "finish_reason": reason}]}))

    @app.post("/v1/completions", dependencies=[api_key], response_model=None)
    async def completions(req: CompletionRequest, request: Request) -> Response:
        """OpenAI's (legacy) text completions: each prompt is an instruction with an optional `Input:` line."""
        check_supported(req)
        decoding = decoding_for(req, orc().planner.decoding, config)
        stops = stops_of(req)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts or len(prompts) > config.max_prompts:
            raise APIError(400, f"prompt lists {len(prompts)} prompts; expected 1 to {config.max_prompts}",
                           param="prompt")
        if req.plan is not None and len(prompts) != 1:
            raise APIError(400, "a plan runs with one prompt", param="plan")
        tasks = [("", "") if req.plan is not None else prompt_task(p, req.input) for p in prompts]
        jobs = [make_job(orc(), req, t, config, decoding) for t in tasks]
        rid, created = f"cmpl-{_response_id()}", int(time.time())
        if req.stream:
            stream = TokenStream(state.batcher, jobs, stops)
            await stream.start()
            with_usage = bool(req.stream_options and req.stream_options.include_usage)

            def chunk(choices: list[dict], **extra) -> str:
                return _sse(Completion.model_validate({"id": rid, "created": created, "model": req.model,
                                                       "choices": choices, **extra}))

            async def events() -> AsyncIterator[str]:
                try:
                    async for i, text in stream:
                        yield chunk([{"index": i, "text": text, "finish_reason": None}])
                except APIError as e:
                    yield f"data: {json.dumps(e.body())}\n\n"
                    return
                outcomes = stream.outcomes
                state.record(outcomes)
                yield chunk([{"index": i, "text": "", "finish_reason": finish(o, stops)[1]}
                             for i, o in enumerate(outcomes)], brickwork=[info_of(o.result) for o in outcomes])
                if with_usage:
                    yield chunk([], usage=usage_of(outcomes))
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        outcomes = await state.run(request, jobs)
        failed = next((o for o in outcomes if o.result.error is not None), None)
        if failed is not None:
            raise step_error(failed.result)
        state.record(outcomes)
        finished = [finish(o, stops) for o in outcomes]
        return _json(Completion.model_validate({
            "id": rid, "created": created, "model": req.model, "usage": usage_of(outcomes),
            "brickwork": [info_of(o.result) for o in outcomes],
            "choices": [{"index": i, "text": t, "finish_reason": r} for i, (t, r) in enumerate(finished)]}))

    app.include_router(admin_router(config, lambda: state.runner))
    return app

