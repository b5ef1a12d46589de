"""The server's settings (`ServerConfig`) and its errors in OpenAI's error shape (`APIError`, `Overloaded`).

Nothing here imports FastAPI: the settings are plain pydantic, so the CLI and the tests build them cheaply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bricks.errors import BrickworkError
from orchestrator.plan import MAX_PLAN_STEPS
from orchestrator.validation import MAX_INSTRUCTION_CHARS

__all__ = ["ServerConfig", "APIError", "Overloaded", "LOOPBACK_HOSTS"]

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class ServerConfig(BaseModel):
    """How `brickwork serve` runs: what it loads, where it listens, who may call it, and its limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: Path | None = None
    """Hugging Face model folder (None: the toy world's model)."""
    library: Path | None = None
    """Brick library folder (None: the toy world's library)."""
    executor: Literal["transformers", "vllm"] = "transformers"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_key: str | None = None
    """Bearer key every /v1 and /metrics request must carry (None: no key asked)."""
    admin_key: str | None = None
    """Bearer key of the /admin endpoints, separate from `api_key` (None: admin endpoints are off)."""
    admin_folder: Path | None = None
    """The only folder whose brick folders /admin/bricks may add or update from (None: admin endpoints are off)."""
    max_batch: int = Field(default=32, ge=1, le=4096)
    """At most this many requests share one executor run."""
    batch_wait_ms: float = Field(default=10.0, ge=0.0, le=10_000.0)
    """How long the first request of a batch waits for the callers seen around the last batch to join it (a lone
    caller never waits). Toy world, 32 clients on 2 cores: 10 ms against 5 gave batches of 30.8 against 27.0
    requests, 4.7 % more requests/s and a p99 of 129 against 173 ms; 8 clients, 5 % fewer requests/s."""
    concurrent_batches: int = Field(default=4, ge=1, le=64)
    """Batches running at once when the executor runs calls concurrently (vLLM: their requests join the engine's
    running batches); the transformers executor runs one at a time whatever this says."""
    max_queue: int = Field(default=256, ge=1)
    """Requests waiting beyond this are refused with 429 and Retry-After."""
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    """A request body over this is refused with 413."""
    max_instruction_chars: int = Field(default=MAX_INSTRUCTION_CHARS, ge=1)
    """An instruction or input longer than this is refused with 400."""
    max_tokens: int = Field(default=1024, ge=1, le=4096)
    """The largest max_tokens a request may ask for (more: 400)."""
    max_plan_steps: int = Field(default=16, ge=1, le=MAX_PLAN_STEPS)
    """A plan (decomposed or given) with more steps is refused with 400."""
    max_prompts: int = Field(default=32, ge=1)
    """The most prompts one /v1/completions request may list."""
    torch_threads: int | None = Field(default=None, ge=1, le=1024)
    """Torch's CPU threads (None: every core this process may use but one, at least 1). The core left over runs
    the HTTP event loop: torch's idle threads spin. Toy world, 2 cores, 32 clients: 1 thread served 249 req/s on
    0.94 cores, 2 threads 239 req/s on 1.71 (`bench_serve.py --torch-threads 2`)."""
    prefix_cache_mib: float = Field(default=256.0, ge=0.0)
    """The transformers executor's prefix cache across batches, in MiB (`bricks.prefix_cache`; 0: off)."""
    engine_process: bool = False
    """Run the model in a process of its own, apart from the HTTP front (`engine.py`; transformers executor, when
    the server opens its orchestrator itself). A crashed model is then a 503, not a dead server, and HTTP does not
    share the model's GIL; but every batch crosses a pipe: on the toy world's 2-core machine it served fewer
    requests/s than one process (`bench_serve.py --compare-engine`), so it is off by default."""
    keep_alive_s: float = Field(default=75.0, gt=0)
    """How long an idle connection stays open. Longer than the pools of common clients keep one (httpx and the
    `openai` package: 5 s), so a client never sends on a connection the server is closing (uvicorn's 5 s default
    raced with them: ReadError on ~1 in 1,000 requests at 128 clients)."""
    gc_freeze: bool = True
    """Freeze the objects that live as long as the server out of the garbage collector's full passes, before
    serving and after `gc_freeze_after_batches` batches (toy world: p99 of 10,000 requests 485 -> 234 ms)."""
    gc_freeze_after_batches: int = Field(default=20, ge=0)

    def executor_options(self) -> dict:
        """What `Orchestrator.from_pretrained` passes to the executor's constructor."""
        if self.executor == "transformers":
            return {"prefix_cache_bytes": int(self.prefix_cache_mib * 2**20)}
        return {}

    def uses_engine_process(self) -> bool:
        """Whether a server that opens its own orchestrator runs it in an engine process (`engine_process`; vLLM
        has engine processes of its own)."""
        return self.engine_process and self.executor == "transformers"

    def threads(self) -> int:
        """The torch CPU threads to run with (`torch_threads`, or all usable cores but one)."""
        if self.torch_threads is not None:
            return self.torch_threads
        import os

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores - 1)


class APIError(BrickworkError):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}} with `status`."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None, extra: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict:
        """The JSON body of the error response."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code},
                **self.extra}


class Overloaded(APIError):
    """The request queue is full: 429 with a Retry-After header (seconds)."""

    def __init__(self, queued: int, retry_after: int) -> None:
        super().__init__(429, f"the server is busy: {queued} requests are waiting; retry after {retry_after} s",
                         type="rate_limit_error", code="queue_full", headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after
