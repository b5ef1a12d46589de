"""The wire format: how an instruction, its input and the conversation so far reach the model, and where the
output starts.

Two formats, both frozen values with `render(instruction, input, history) -> str`:

- **raw** (`PromptTemplate`): a template string with `{instruction}` and `{input}` and an optional `{history}`
  field. Where the template has `{history}`, the earlier messages are written there, one `role: content` line
  each (nothing when there are none); a template without it ignores the history: the brick was trained on one
  instruction and one input (a fixed-function library, like the toy world's) and answers the same either way.
- **chat** (`ChatTemplate`): the model's own chat template, through
  `tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)`, with the messages

      [{"role": "system", "content": system}]            # only when ChatTemplate.system is set
      + [{"role": m.role, "content": m.content} for m in history]   # earlier turns, oldest first
      + [{"role": "user", "content": user}]              # the step: "{instruction}\\n\\n{input}",
                                                         # or the instruction alone when the input is empty

Which one a step uses is `choose_template`: a step (from its brick's manifest) may say `prompt_format`
"raw" or "chat"; without one, a brick's own raw `prompt_template` wins, then the model's chat template when
its tokenizer has one, then the default raw template.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bricks.errors import ConfigError

__all__ = ["PromptTemplate", "DEFAULT_TEMPLATE", "ChatTemplate", "Message", "History", "PromptFormat",
           "PROMPT_FORMATS", "ROLES", "MAX_HISTORY_MESSAGES", "as_history", "check_format", "choose_template",
           "has_chat_template"]

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")
PromptFormat = Literal["raw", "chat"]
"""How a step's prompt is written: "raw" (a `PromptTemplate`) or "chat" (the model's chat template)."""
PROMPT_FORMATS: tuple[str, ...] = ("raw", "chat")
MAX_HISTORY_MESSAGES = 64  # earlier messages one task may carry
_FIELD = re.compile(r"\{(instruction|input|history)\}")


@dataclass(frozen=True)
class Message:
    """One message of a conversation: its role ("system", "user" or "assistant") and its text."""

    role: Role
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"message role {self.role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(self.content, str):
            raise ConfigError(f"message content must be a string, got {type(self.content).__name__}")


History = tuple[Message, ...]
"""The earlier messages of a conversation, oldest first; the task itself is not part of it."""


def as_history(value: object) -> History:
    """A History from None, Messages, {"role", "content"} mappings or (role, content) pairs."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"history must be a sequence of messages, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, Message):
            out.append(item)
        elif isinstance(item, Mapping) and "role" in item and "content" in item:
            out.append(Message(role=item["role"], content=item["content"]))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            out.append(Message(role=item[0], content=item[1]))
        else:
            raise ConfigError(f"history message {i} is {type(item).__name__}; expected a Message, a "
                              "{role, content} mapping or a (role, content) pair")
    if len(out) > MAX_HISTORY_MESSAGES:
        raise ConfigError(f"history has {len(out)} messages, more than the maximum of {MAX_HISTORY_MESSAGES}")
    return tuple(out)


@dataclass(frozen=True)
class PromptTemplate:
    """A raw prompt template with `{instruction}` and `{input}` fields (and optionally `{history}`); the model's
    output follows it.

    The same template is used to train a brick and to run it, so that a routed step reaches the model in
    the form the brick was trained on.
    """

    text: str = "{instruction}\nIn: {input}\nOut: "

    def __post_init__(self) -> None:
        for name in ("{instruction}", "{input}"):
            if name not in self.text:
                raise ConfigError(f"prompt template {self.text!r} lacks the field {name}")

    def render(self, instruction: str, input: str = "", history: History = ()) -> str:
        """The prompt; `history` goes where the template has `{history}` (one `role: content` line per message)
        and is ignored by a template without it. Fields are filled in one pass: text inside a value is never
        read as a field."""
        values = {"instruction": instruction, "input": input,
                  "history": "".join(f"{m.role}: {m.content}\n" for m in history)}
        return _FIELD.sub(lambda m: values[m[1]], self.text)


DEFAULT_TEMPLATE = PromptTemplate()


def has_chat_template(tokenizer: Any) -> bool:
    """Whether `tokenizer` (or None) carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


@dataclass(frozen=True)
class ChatTemplate:
    """The model's chat template: the step and the earlier turns as messages (layout in the module's doc),
    rendered by `tokenizer.apply_chat_template(..., add_generation_prompt=True, tokenize=False)`."""

    tokenizer: Any = field(repr=False, compare=False)
    system: str | None = None  # a system message before everything else
    user: str = "{instruction}\n\n{input}"  # the step's user message when its input is not empty
    source: str = field(init=False, repr=False)  # the template itself: two ChatTemplates are equal by it

    def __post_init__(self) -> None:
        if not has_chat_template(self.tokenizer):
            raise ConfigError(f"tokenizer {type(self.tokenizer).__name__} has no chat template; "
                              "use a raw PromptTemplate (prompt_format 'raw')")
        for name in ("{instruction}", "{input}"):
            if name not in self.user:
                raise ConfigError(f"chat user message {self.user!r} lacks the field {name}")
        object.__setattr__(self, "source", str(self.tokenizer.chat_template))

    def messages(self, instruction: str, input: str = "", history: History = ()) -> list[dict[str, str]]:
        """The messages handed to the chat template."""
        out = [{"role": "system", "content": self.system}] if self.system else []
        out += [{"role": m.role, "content": m.content} for m in history]
        values = {"instruction": instruction, "input": input, "history": ""}
        user = _FIELD.sub(lambda m: values[m[1]], self.user) if input else instruction
        return [*out, {"role": "user", "content": user}]

    def render(self, instruction: str, input: str = "", history: History = ()) -> str:
        """The prompt text, ending with the template's generation prompt (the assistant's turn)."""
        try:
            text = self.tokenizer.apply_chat_template(self.messages(instruction, input, history),
                                                      add_generation_prompt=True, tokenize=False)
        except Exception as e:  # noqa: BLE001 (jinja's own errors: a template that refuses these messages)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"the model's chat template cannot render {len(history) + 1} messages: {first}") from None
        if not isinstance(text, str):
            raise ConfigError(f"apply_chat_template returned {type(text).__name__}, expected the prompt text")
        return text


def check_format(value: object, source: str = "prompt_format") -> PromptFormat | None:
    """`value` as a PromptFormat (None: choose by the model); a ConfigError naming it otherwise."""
    if value is None or value in PROMPT_FORMATS:
        return value  # type: ignore[return-value]
    raise ConfigError(f"{source} {value!r} is not one of {', '.join(PROMPT_FORMATS)}")


def choose_template(prompt_format: object, prompt_template: str | None, tokenizer: Any,
                    default: PromptTemplate = DEFAULT_TEMPLATE) -> PromptTemplate | ChatTemplate:
    """The template a step is rendered with.

    "chat": the tokenizer's chat template (a ConfigError when it has none); "raw": `prompt_template` or
    `default`; None: `prompt_template` when given (the brick was trained on it), else the chat template when
    the tokenizer has one, else `default`. `tokenizer` may be None (an executor without one: raw).
    """
    fmt = check_format(prompt_format)
    if fmt == "chat":
        return ChatTemplate(tokenizer)
    if fmt == "raw" or prompt_template or not has_chat_template(tokenizer):
        return PromptTemplate(prompt_template) if prompt_template else default
    return ChatTemplate(tokenizer)
