"""Requests and responses of the HTTP API in OpenAI's shapes (chat completions, completions, models, errors),
with brickwork's extensions: `input`, `plan` and `bricks` in a request, and `brickwork` (plan, step trace,
error) in a response."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.plan import Plan
from orchestrator.result import StepTrace

__all__ = ["ChatMessage", "ContentPart", "StreamOptions", "ChatCompletionRequest", "CompletionRequest", "Usage",
           "BrickworkInfo", "ChatCompletion", "ChatCompletionChunk", "Completion", "ModelCard", "ModelList",
           "ErrorBody", "ErrorResponse", "Health", "AdminBrickRequest", "AdminBrickResponse"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContentPart(BaseModel):
    """One part of a message's content; only `text` parts can be run."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """A chat message. Other fields a client sends along (tool calls, audio) are ignored."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class _Sampling(_Strict):
    """Fields common to both endpoints. Unknown fields are refused (400), as OpenAI does."""

    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1)
    user: str | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    store: bool | None = None
    # brickwork's extensions (the OpenAI client's `extra_body`)
    input: str | None = None
    """The task's input (else: the text after an `Input:` line of the instruction)."""
    plan: Plan | None = None
    """A plan to run as it is (model "brickwork" only)."""
    bricks: list[str] | None = Field(default=None, min_length=1, max_length=16)
    """Run the whole instruction as one step with these bricks (`id` or `id@version`)."""


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions: the last user message is the instruction."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = None
    modalities: list[str] | None = None


class CompletionRequest(_Sampling):
    """POST /v1/completions: each prompt is an instruction (with an optional `Input:` line)."""

    prompt: str | list[str]
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None


class Usage(BaseModel):
    """Tokens over all steps: every prompt the model was shown and every output it wrote."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class BrickworkInfo(BaseModel):
    """The plan that ran, the bricks of each step, the step trace and the error (if a step failed)."""

    plan: Plan
    bricks: list[list[str]]
    steps: list[StepTrace]
    timings_ms: dict[str, float]
    error: str | None = None


class _AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class _ChatChoice(BaseModel):
    index: int
    message: _AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    """A chat completion, as OpenAI's `chat.completion` object, plus `brickwork`."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[_ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    brickwork: BrickworkInfo


class _Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class _ChunkChoice(BaseModel):
    index: int
    delta: _Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion (`chat.completion.chunk`)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[_ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    brickwork: BrickworkInfo | None = None


class _TextChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class Completion(BaseModel):
    """A text completion (`text_completion`), one choice per prompt; streamed as the same object per event."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[_TextChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    brickwork: list[BrickworkInfo] | None = None


class ModelCard(BaseModel):
    """One entry of GET /v1/models."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "brickwork"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape; `brickwork` carries the trace when a step failed."""

    error: ErrorBody
    brickwork: BrickworkInfo | None = None


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    executor: str
    bricks: int
    queued: int
    batches: int
    mean_batch: float
    busy_s: float = 0.0  # seconds batches have been running (summed over concurrent ones): load over time
    concurrent_batches: int = 1  # batches that may run at once
    engine_joined: int | None = None  # vLLM: requests that joined a running engine batch (None: no engine loop)
    dropped: int = 0  # jobs whose caller went away: never run, or stopped while their batch ran
    engine_aborted: int | None = None  # vLLM: requests aborted in the engine because their caller went away
    torch_threads: int = 1  # torch's CPU threads in the server process
    engine_process: bool = False  # the model runs in a process of its own (engine.py)
    gc_frozen: int = 0  # objects moved out of the garbage collector's passes (gc_freeze.py)
    prefix_cache_hits: int | None = None  # transformers: prompt beginnings taken from the prefix cache
    prefix_cache_hit_tokens: int | None = None  # ... and the prompt tokens they skipped (None: no prefix cache)


class AdminBrickRequest(_Strict):
    """POST /admin/bricks: a brick folder under the server's admin folder; a new id is added, a known id updated."""

    path: str = Field(min_length=1, max_length=4096)
    mode: Literal["auto", "add", "update"] = "auto"


class AdminBrickResponse(BaseModel):
    """What an admin change did: the brick, the version it touched (None: every version) and the active one now."""

    id: str
    version: int | None
    active: int | None
    action: Literal["added", "updated", "rolled_back", "removed"]
