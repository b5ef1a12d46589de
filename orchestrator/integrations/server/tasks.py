"""From an HTTP request to a runner `Job`, and from an outcome or error to OpenAI's shapes.

The last user message is the instruction; the task's input is the request's `input` field, else the text after
an `Input:` line (`orchestrator.integrations.langchain.split_task`). `model` picks what runs: "brickwork" plans
(or runs the request's `plan`, or its `bricks` as one step), "brick:<id>" or "brick:<id>@<version>" runs the
instruction as one step with that brick.
"""

from __future__ import annotations

from orchestrator.integrations.server.config import APIError, ServerConfig
from orchestrator.integrations.server.runner import Job, Outcome, parse_brick_key, supports_seed
from orchestrator.integrations.server.schemas import (
    BrickworkInfo,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    Usage,
)
from orchestrator.plan import Decoding
from orchestrator.result import Result
from orchestrator.validation import check_text

__all__ = ["PLANNER_MODEL", "BRICK_PREFIX", "check_supported", "decoding_for", "stops_of", "chat_task",
           "prompt_task", "make_job", "error_of", "step_error", "info_of", "usage_of", "finish", "apply_stop"]

PLANNER_MODEL = "brickwork"
BRICK_PREFIX = "brick:"
# a failed step whose error is one of these is the request's fault (400); any other is the server's (500)
_CLIENT_STEP_ERRORS = ("InputError", "PlanError", "UnsupportedConfigError", "ConfigError")


def _bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def check_supported(req: ChatCompletionRequest | CompletionRequest) -> None:
    """400 for what brickwork cannot do rather than an answer that silently ignores it."""
    if (req.n or 1) != 1:
        raise _bad(f"n={req.n} is not supported: brickwork returns one choice (n=1)", "n", "unsupported_value")
    if req.frequency_penalty or req.presence_penalty:
        raise _bad("frequency_penalty and presence_penalty are not supported (use 0)", "frequency_penalty",
                   "unsupported_parameter")
    if req.logit_bias:
        raise _bad("logit_bias is not supported", "logit_bias", "unsupported_parameter")
    if req.logprobs:
        raise _bad("logprobs are not supported", "logprobs", "unsupported_parameter")
    if isinstance(req, ChatCompletionRequest):
        if req.tools or req.tool_choice not in (None, "none"):
            raise _bad("tools are not supported: bricks answer with text", "tools", "unsupported_parameter")
        if req.response_format and req.response_format.get("type") != "text":
            raise _bad("response_format other than text is not supported", "response_format", "unsupported_value")
    else:
        if req.echo or req.suffix or (req.best_of or 1) != 1:
            raise _bad("echo, suffix and best_of > 1 are not supported", "echo", "unsupported_parameter")
    if req.stream_options is not None and not req.stream:
        raise _bad("stream_options needs stream=true", "stream_options")


def decoding_for(req: ChatCompletionRequest | CompletionRequest, base: Decoding,
                 config: ServerConfig) -> Decoding | None:
    """The decoding the request asks for (None: the plan's own), within the server's max_tokens limit."""
    max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens
    if max_tokens is not None and max_tokens > config.max_tokens:
        raise _bad(f"max_tokens is {max_tokens}, more than this server's maximum of {config.max_tokens}",
                   "max_tokens", "max_tokens_too_large")
    update: dict[str, float | int] = {}
    if max_tokens is not None:
        update["max_new_tokens"] = max_tokens
    if req.temperature is not None:
        update["temperature"] = req.temperature
    if req.top_p is not None:
        update["top_p"] = req.top_p
    return base.model_copy(update=update) if update else None


def stops_of(req: ChatCompletionRequest | CompletionRequest) -> list[str]:
    """The request's stop sequences (at most 4; empty ones dropped)."""
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > 4:
        raise _bad(f"stop has {len(stops)} sequences; at most 4", "stop")
    return [s for s in stops if s]


def apply_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """`text` cut before the first stop sequence, and whether one was found."""
    cut = min((text.index(s) for s in stops if s in text), default=None)
    return (text, False) if cut is None else (text[:cut], True)


def _content(message: ChatMessage) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    parts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise _bad(f"message content of type {part.type!r} is not supported; only text", "messages",
                       "unsupported_content")
        parts.append(part.text)
    return "\n".join(parts)


def chat_task(messages: list[ChatMessage], input: str | None) -> tuple[str, str]:
    """(instruction, input) from chat messages: the last user message, split at an `Input:` line."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    from orchestrator.integrations.langchain import split_task

    if not any(m.role == "user" for m in messages):
        raise _bad("no user message: the last user message is the instruction", "messages")
    kinds = {"user": HumanMessage, "assistant": AIMessage}
    converted = [kinds.get(m.role, SystemMessage)(content=_content(m)) for m in messages]
    return split_task(converted, input)


def prompt_task(prompt: str, input: str | None) -> tuple[str, str]:
    """(instruction, input) from a completion prompt, split at an `Input:` line unless `input` is given."""
    from langchain_core.messages import HumanMessage

    from orchestrator.integrations.langchain import split_task

    return split_task([HumanMessage(content=prompt)], input)


def _known(orc, brick_id: str, version: int | None) -> None:
    try:
        orc.planner.library.get(brick_id, version)
    except KeyError:
        name = brick_id if version is None else f"{brick_id}@{version}"
        raise APIError(404, f"The model '{BRICK_PREFIX}{name}' does not exist: no brick {name!r} in the library",
                       code="model_not_found", param="model") from None


def make_job(orc, req: ChatCompletionRequest | CompletionRequest, task: tuple[str, str], config: ServerConfig,
             decoding: Decoding | None) -> Job:
    """The job of one task of a request: what to run (model, plan, bricks), its decoding and seed."""
    instruction, text = task
    if req.plan is None:
        check_text(instruction, "instruction", max_chars=config.max_instruction_chars)
        check_text(text, "input", allow_empty=True, max_chars=config.max_instruction_chars)
    if req.seed is not None and ((decoding or orc.planner.decoding).temperature > 0) and not supports_seed(orc):
        raise _bad("seed with temperature > 0 needs the transformers executor", "seed", "unsupported_parameter")
    model = req.model
    if model.startswith(BRICK_PREFIX):
        if req.plan is not None or req.bricks is not None:
            raise _bad(f"model {model!r} runs one brick; give plan or bricks with model 'brickwork'", "model")
        brick_id, version = parse_brick_key(model[len(BRICK_PREFIX):])
        _known(orc, brick_id, version)
        return Job(instruction=instruction, input=text, bricks=((brick_id, version),), decoding=decoding, seed=req.seed)
    if model != PLANNER_MODEL:
        raise APIError(404, f"The model '{model}' does not exist; expected '{PLANNER_MODEL}' or "
                       f"'{BRICK_PREFIX}<id>[@<version>]' (GET /v1/models lists them)", code="model_not_found",
                       param="model")
    if req.plan is not None and req.bricks is not None:
        raise _bad("give plan or bricks, not both", "plan")
    if req.plan is not None:
        if len(req.plan.steps) > config.max_plan_steps:
            raise _bad(f"the plan has {len(req.plan.steps)} steps, more than this server's maximum of "
                       f"{config.max_plan_steps}", "plan", "plan_too_long")
        return Job(plan=req.plan, decoding=decoding, seed=req.seed)
    if req.bricks is not None:
        keys = tuple(parse_brick_key(k) for k in req.bricks)
        for brick_id, version in keys:
            _known(orc, brick_id, version)
        return Job(instruction=instruction, input=text, bricks=keys, decoding=decoding, seed=req.seed)
    return Job(instruction=instruction, input=text, decoding=decoding, seed=req.seed)


def info_of(result: Result) -> BrickworkInfo:
    """The `brickwork` extension of a response: plan, bricks per step, trace, error."""
    return BrickworkInfo(plan=result.plan, bricks=[[b.key for b in s.bricks] for s in result.steps],
                         steps=list(result.steps), timings_ms=dict(result.timings_ms), error=result.error)


def step_error(result: Result) -> APIError:
    """A failed step as an error response that names the step (400 for the request's fault, else 500)."""
    failed = next((s for s in result.steps if s.error is not None), None)
    kind = (failed.error or "").partition(":")[0] if failed else ""
    status = 400 if kind in _CLIENT_STEP_ERRORS else 500
    return APIError(status, result.error or "the task failed", type="invalid_request_error" if status == 400
                    else "server_error", code="step_failed", param=f"step {failed.index}" if failed else None,
                    extra={"brickwork": info_of(result).model_dump(mode="json")})


def error_of(e: BaseException) -> APIError:
    """Any error of a job as an APIError: brickwork's own errors are the request's fault (400)."""
    from bricks.errors import BrickworkError

    if isinstance(e, APIError):
        return e
    if isinstance(e, KeyError):
        return APIError(404, str(e.args[0] if e.args else e), code="not_found")
    if isinstance(e, BrickworkError):
        return _bad(str(e).splitlines()[0] if str(e) else type(e).__name__, code=type(e).__name__)
    return APIError(500, f"internal error: {type(e).__name__}", type="server_error", code="internal_error")


def usage_of(outcomes: list[Outcome]) -> Usage:
    prompt = sum(o.prompt_tokens for o in outcomes)
    completion = sum(o.completion_tokens for o in outcomes)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def finish(outcome: Outcome, stops: list[str]) -> tuple[str, str]:
    """(text, finish_reason) of an outcome: cut at a stop sequence ("stop"), or "length" at max tokens."""
    text, stopped = apply_stop(outcome.result.output, stops)
    return text, "stop" if stopped or not outcome.hit_length else "length"

