"""Structured output for `ChatBrickwork.with_structured_output`: the base model writes JSON under a grammar
made from the schema (`bricks.json_grammar`, decoded by the executor's `complete_constrained`).

The model sees the last human message's instruction with the schema appended (rendered like a step: the model's
chat template with the history, or the raw template), and writes a JSON value of the schema, nothing else. No
bricks run: the base model answers. Needs an executor with constrained decoding (transformers or vLLM, both with
xgrammar's grammar of the schema) and a tokenizer that can write JSON's characters; otherwise a one-line
`StructuredOutputError` names what is missing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda

from bricks.errors import BrickworkError, ConfigError
from bricks.json_grammar import JsonSchemaGrammar
from bricks.prompt import choose_template
from orchestrator.integrations.langchain_messages import split_conversation

__all__ = ["StructuredOutputError", "ToolsNotSupportedError", "json_schema_of", "structured_runnable"]

SCHEMA_PROMPT = "{instruction}\nAnswer with JSON of this schema: {schema}"


class StructuredOutputError(BrickworkError):
    """Structured output cannot be produced: no constrained decoder, or the model's JSON does not fit."""


class ToolsNotSupportedError(BrickworkError, NotImplementedError):
    """`bind_tools` on ChatBrickwork: brickwork's models do not call tools."""


def json_schema_of(schema: Any) -> tuple[dict, Callable[[Any], Any]]:
    """(JSON schema, parse) for a pydantic model class, a JSON-schema dict, or what LangChain can convert
    (TypedDict, OpenAI function); `parse` turns the decoded JSON into the value to return."""
    try:
        from pydantic import BaseModel

        if isinstance(schema, type) and issubclass(schema, BaseModel):
            return schema.model_json_schema(), schema.model_validate
        if isinstance(schema, dict) and any(k in schema for k in ("type", "properties", "anyOf", "enum", "$ref")):
            return dict(schema), lambda value: value
        from langchain_core.utils.function_calling import convert_to_json_schema

        return convert_to_json_schema(schema), lambda value: value
    except Exception as e:  # noqa: BLE001 (whatever the conversion says, as one line)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"with_structured_output cannot read a schema from {type(schema).__name__}: {first}") from None


def _decode(chat, value: Any, schema: dict, grammar: JsonSchemaGrammar) -> str:
    instruction, input, history = split_conversation(chat._convert_input(value).to_messages())
    orc = chat.orc
    complete = getattr(orc.executor, "complete_constrained", None)
    if complete is None:
        raise StructuredOutputError(f"with_structured_output needs an executor with constrained decoding "
                                    f"(transformers or vllm); executor {getattr(orc.executor, 'name', '?')!r} has none")
    template = choose_template(getattr(orc, "prompt_format", None), None, getattr(orc.executor, "tokenizer", None),
                               orc.template)
    text = SCHEMA_PROMPT.format(instruction=instruction, schema=json.dumps(schema, separators=(",", ":")))
    return complete(template.render(text, input, history), grammar)


def structured_runnable(chat, schema: Any, *, include_raw: bool = False) -> Runnable:
    """A Runnable from chat input to the parsed value (a pydantic instance for a pydantic schema, else a dict),
    or {"raw", "parsed", "parsing_error"} with `include_raw`. The schema is checked now; no model is loaded
    until the first call."""
    json_schema, parse = json_schema_of(schema)
    grammar = JsonSchemaGrammar(json_schema)

    def call(value: Any, config: RunnableConfig | None = None) -> Any:
        text = _decode(chat, value, json_schema, grammar)
        raw = AIMessage(content=text, response_metadata={"model_provider": "brickwork", "constrained": True})
        try:
            try:  # the decoder writes only JSON of the schema: whole, or cut short
                value = json.loads(text)
            except json.JSONDecodeError:
                raise StructuredOutputError(f"the model wrote no complete JSON value of the schema: {text[:80]!r} "
                                            "(its tokenizer must be able to write JSON's characters)") from None
            parsed, error = parse(value), None
        except Exception as e:  # noqa: BLE001 (reported as parsing_error with include_raw)
            if not include_raw:
                raise
            parsed, error = None, e
        return {"raw": raw, "parsed": parsed, "parsing_error": error} if include_raw else parsed

    return RunnableLambda(call, name="ChatBrickworkStructuredOutput")
