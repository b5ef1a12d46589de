"""The JSON-schema grammar for constrained decoding: every prefix of a valid value is a prefix, what breaks the
schema is not, and unsupported schemas are refused in one line."""

from typing import Literal, Optional

import pytest
from pydantic import BaseModel

from bricks.errors import ConfigError
from bricks.json_grammar import JsonSchemaGrammar


class Inner(BaseModel):
    x: int


class Record(BaseModel):
    name: str
    n: int
    tags: list[str] = []
    mood: Literal["a", "b"] = "a"
    score: Optional[float] = None
    inner: Inner | None = None


GRAMMAR = JsonSchemaGrammar(Record.model_json_schema())


def test_every_prefix_of_a_valid_value_is_a_prefix():
    text = '{"name": "a\\"b\\u00e9", "n": -12, "tags": ["x", "y"], "mood": "b", "score": 1.5e3, "inner": {"x": 3}}'
    assert all(GRAMMAR.is_prefix(text[:k]) for k in range(len(text) + 1))
    assert GRAMMAR.is_complete(text) and not GRAMMAR.is_complete(text[:-1])
    assert Record.model_validate_json(text).inner == Inner(x=3)


@pytest.mark.parametrize("bad", ['{"name": 3', '{"name": "a"}', '{"name": "a", "name"', '{"zz', "[",
                                 '{"n": 1.5', '{"name": "a", "n": 1} x', '{"mood": "c', '{   "',
                                 '{"name": "a\x01', '{"n": ' + "1" * 30])
def test_what_breaks_the_schema_is_refused(bad):
    assert not GRAMMAR.is_prefix(bad)


def test_required_keys_and_scalars():
    g = JsonSchemaGrammar({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]})
    assert g.is_prefix('{"o') and g.is_prefix('{"ok": tr') and not g.is_prefix('{"ok": 1')
    assert not g.is_prefix("{}") and g.is_complete('{"ok": false}')
    assert not g.is_prefix('{"ok": true,')  # closed object, every key written
    assert JsonSchemaGrammar({"type": "integer"}).is_complete("42")
    anything = JsonSchemaGrammar({})
    assert anything.is_complete('{"a": [1, null, "x"]}') and anything.is_complete("true")


def test_unsupported_schemas_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="type 'date' is not one of"):
        JsonSchemaGrammar({"type": "date"})
    with pytest.raises(ConfigError, match=r"\$ref 'http://x' is not supported"):
        JsonSchemaGrammar({"$ref": "http://x"})
    with pytest.raises(ConfigError, match="must be a mapping, got list"):
        JsonSchemaGrammar([])
