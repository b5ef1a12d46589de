"""LangChain messages to brickwork tasks: the instruction and input of the last human message, the earlier
messages as history, and results back as plain metadata. Used by `orchestrator.integrations.langchain`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, HumanMessage, SystemMessage
from langchain_core.prompt_values import PromptValue

from bricks.errors import BrickworkError, ConfigError
from bricks.prompt import ROLES, History, Message
from orchestrator.result import Result, StepTrace

__all__ = ["TaskFailed", "split_task", "split_history", "split_conversation", "task_of", "result_metadata",
           "step_metadata"]

_INPUT_LINE = re.compile(r"^(?P<instruction>.*?)\n[ \t]*input[ \t]*:[ \t]*(?P<input>.*)$", re.IGNORECASE | re.DOTALL)
Task = tuple[str, str, History]  # (instruction, input, history)


class TaskFailed(BrickworkError, RuntimeError):
    """A step of the plan failed; `result` holds the plan and the trace up to the failure."""

    def __init__(self, result: Result) -> None:
        super().__init__(result.error or "task failed")
        self.result = result


def _text(message: BaseMessage) -> str:
    return message.text if isinstance(message.text, str) else message.text()  # property in core >= 1.0


def _last_human(messages: Sequence[BaseMessage]) -> int:
    return next((i for i in range(len(messages) - 1, -1, -1) if isinstance(messages[i], HumanMessage)),
                len(messages) - 1)


def split_task(messages: Sequence[BaseMessage], input: str | None = None) -> tuple[str, str]:
    """(instruction, input) from chat messages: the last human message, split at an `Input:` line.

    An explicit `input` wins over the message's `additional_kwargs["input"]`, which wins over the `Input:` line.
    """
    if not messages:
        raise ConfigError("no messages: expected at least one human message with the instruction")
    human = messages[_last_human(messages)]
    text = _text(human).strip()
    if input is None and isinstance(human.additional_kwargs.get("input"), str):
        input = human.additional_kwargs["input"]
    if input is None:
        match = _INPUT_LINE.match(text)
        if match:
            return match["instruction"].strip(), match["input"].strip()
        return text, ""
    return text, input


def _role(message: BaseMessage, i: int) -> str:
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, SystemMessage):
        return "system"
    role = message.role if isinstance(message, ChatMessage) else message.type
    role = {"human": "user", "ai": "assistant"}.get(role, role)
    if role not in ROLES:
        raise ConfigError(f"message {i} is a {role!r} message; brickwork's models take {', '.join(ROLES)} "
                          "messages (tools are not supported)")
    return role


def split_history(messages: Sequence[BaseMessage]) -> History:
    """The messages before the last human message, as brickwork's history (oldest first, text content)."""
    return tuple(Message(role=_role(m, i), content=_text(m)) for i, m in enumerate(messages[:_last_human(messages)]))


def split_conversation(messages: Sequence[BaseMessage], input: str | None = None) -> Task:
    """(instruction, input, history): the last human message is the task (`split_task`); the ones before it
    are the history. Messages after the last human message are not used."""
    return (*split_task(messages, input), split_history(messages))


def task_of(value: Any, input: str | None = None) -> Task:
    """(instruction, input, history) from what a Runnable may get: a str, a mapping (instruction, input,
    history), a prompt value, messages or an (instruction, input) pair."""
    if isinstance(value, dict):
        from bricks.prompt import as_history

        return (str(value.get("instruction", "")), str(value.get("input") or "") if input is None else input,
                as_history(value.get("history")))
    if isinstance(value, str):
        return split_conversation([HumanMessage(value)], input)
    if isinstance(value, PromptValue):
        return split_conversation(value.to_messages(), input)
    if isinstance(value, BaseMessage):
        return split_conversation([value], input)
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (tuple, list)):  # (instruction, input)
        return str(value[0]), str(value[1] if len(value) > 1 else ""), ()
    if isinstance(value, (list, tuple)) and all(isinstance(m, BaseMessage) for m in value):
        return split_conversation(list(value), input)
    raise ConfigError(f"cannot read a task from {type(value).__name__}; expected a str, a dict with instruction "
                      "and input, a prompt value or messages")


def step_metadata(step: StepTrace) -> dict[str, Any]:
    """One step's trace as plain JSON-able data."""
    return {"step": step.index, "instruction": step.instruction, "input": step.input, "output": step.output,
            "bricks": [b.key for b in step.bricks], "route": step.route, "error": step.error}


def result_metadata(result: Result) -> dict[str, Any]:
    """The plan and the bricks of a result, as plain JSON-able data (for `response_metadata`)."""
    return {
        "plan": result.plan.model_dump(mode="json"),
        "bricks": [[b.key for b in s.bricks] for s in result.steps],
        "steps": [{k: v for k, v in step_metadata(s).items() if k != "step"} for s in result.steps],
        "timings_ms": dict(result.timings_ms),
    }
