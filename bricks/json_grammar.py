"""A JSON-schema grammar for constrained decoding: decoders constrain to its `json_schema` (with xgrammar, see
`bricks.constrained`; whitespace runs at most `max_blank`). `is_prefix` says whether a text can still become a
JSON value of the schema, `is_complete` whether it is one: checks on a text, not used while decoding.

Checked by `is_prefix`: types (object, array, string, integer, number, boolean, null), `properties` (only
known keys, each once; a closed object when it has properties), `required`, `items`, `enum`/`const`, `anyOf`/
`oneOf`, `$ref` into `$defs`/`definitions`, and a schema without a type (any JSON value). Other keywords
(`minimum`, `pattern`, `maxLength`, ...) are not enforced here: validate the parsed value afterwards (pydantic
does for a pydantic schema). Strings are capped at `max_chars`, arrays at `max_items`, blank runs at `max_blank`
(the decoder bounds blank runs the same way, and the rest by its token budget).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bricks.errors import BrickworkError, ConfigError

__all__ = ["JsonSchemaGrammar"]

_WS = " \t\n\r"
_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
_LITERALS = {"boolean": (True, False), "null": (None,)}
_MAX_DEPTH = 16
_MAX_NUMBER = 24  # characters of one number


class _Incomplete(BrickworkError):
    """The text ended inside a value that can still be completed (internal: never escapes the grammar)."""


class _Invalid(BrickworkError):
    """The text cannot be completed into a value of the schema."""


@dataclass(frozen=True)
class JsonSchemaGrammar:
    """Completions that are JSON values of `schema` (a JSON-schema mapping; see the module's doc for what
    is enforced)."""

    schema: Mapping[str, Any] = field(compare=False)
    max_chars: int = 200
    max_items: int = 16
    max_blank: int = 2

    schema_text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.schema, Mapping):
            raise ConfigError(f"a JSON schema must be a mapping, got {type(self.schema).__name__}")
        try:
            text = json.dumps(self.schema)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"a JSON schema must be JSON itself: {e}") from None
        object.__setattr__(self, "schema_text", text)  # the schema as given now; later changes to it do not count
        object.__setattr__(self, "schema", json.loads(text))
        self._check(self.schema, 0)

    @property
    def json_schema(self) -> dict:
        """The JSON schema decoders constrain to (a fresh copy)."""
        return json.loads(self.schema_text)

    # -- the schema --------------------------------------------------------------------------------------------
    def _resolve(self, node: Mapping) -> Mapping:
        seen = 0
        while "$ref" in node:
            ref = node["$ref"]
            parts = ref.split("/") if isinstance(ref, str) else []
            if len(parts) != 3 or parts[0] != "#" or parts[1] not in ("$defs", "definitions"):
                raise ConfigError(f"JSON schema $ref {ref!r} is not supported; expected '#/$defs/NAME'")
            target = self.schema.get(parts[1], {}).get(parts[2])
            if not isinstance(target, Mapping):
                raise ConfigError(f"JSON schema $ref {ref!r} names no definition")
            node, seen = target, seen + 1
            if seen > _MAX_DEPTH:
                raise ConfigError(f"JSON schema $ref {ref!r} refers to itself")
        return node

    def _check(self, node: object, depth: int) -> None:
        if not isinstance(node, Mapping):
            raise ConfigError(f"a JSON schema node must be a mapping, got {type(node).__name__}")
        if depth > _MAX_DEPTH:
            return  # recursive schemas are fine: only the text is depth-limited
        node = self._resolve(node)
        types = node.get("type")
        for t in types if isinstance(types, list) else [types] if types is not None else []:
            if t not in _TYPES:
                raise ConfigError(f"JSON schema type {t!r} is not one of {', '.join(_TYPES)}")
        for key in ("anyOf", "oneOf"):
            for option in node.get(key, ()):
                self._check(option, depth + 1)
        for sub in (node.get("properties") or {}).values():
            self._check(sub, depth + 1)
        if isinstance(node.get("items"), Mapping):
            self._check(node["items"], depth + 1)

    # -- the text ----------------------------------------------------------------------------------------------
    def _ws(self, s: str, i: int) -> int:
        j = i
        while j < len(s) and s[j] in _WS:
            j += 1
        if j - i > self.max_blank:
            raise _Invalid
        return j

    def _literal(self, s: str, i: int, options) -> int:
        for value in options:
            text = json.dumps(value, ensure_ascii=False)
            if s.startswith(text, i):
                return i + len(text)
            if text.startswith(s[i:]):
                raise _Incomplete
        raise _Invalid

    def _string(self, s: str, i: int) -> int:
        if s[i] != '"':
            raise _Invalid
        j, n = i + 1, 0
        while j < len(s):
            ch = s[j]
            if ch == '"':
                return j + 1
            if ch == "\\":
                if j + 1 >= len(s):
                    raise _Incomplete
                if s[j + 1] == "u":
                    digits = s[j + 2:j + 6]
                    if any(c not in "0123456789abcdefABCDEF" for c in digits):
                        raise _Invalid
                    if len(digits) < 4:
                        raise _Incomplete
                    j += 6
                elif s[j + 1] in '"\\/bfnrt':
                    j += 2
                else:
                    raise _Invalid
            elif ord(ch) < 32:
                raise _Invalid
            else:
                j += 1
            n += 1
            if n > self.max_chars:
                raise _Invalid
        raise _Incomplete

    def _number(self, s: str, i: int, integer: bool) -> int:
        j = i + (s[i] == "-")
        start = j
        while j < len(s) and s[j].isdigit():
            j += 1
        if j == start:
            raise _Incomplete if j == len(s) else _Invalid
        if not integer and j < len(s) and s[j] == ".":
            j += 1
            k = j
            while j < len(s) and s[j].isdigit():
                j += 1
            if j == k:
                raise _Incomplete if j == len(s) else _Invalid
        if not integer and j < len(s) and s[j] in "eE":
            j += 1 + (j + 1 < len(s) and s[j + 1] in "+-")
            k = j
            while j < len(s) and s[j].isdigit():
                j += 1
            if j == k:
                raise _Incomplete if j == len(s) else _Invalid
        if j - i > _MAX_NUMBER:
            raise _Invalid
        if j == len(s):
            raise _Incomplete  # more digits may follow
        return j

    def _object(self, s: str, i: int, node: Mapping, depth: int) -> int:
        props = node.get("properties") or {}
        extra = node.get("additionalProperties", not props)
        required, seen = set(node.get("required", ())), set()
        i = self._ws(s, i + 1)
        while True:
            if i >= len(s):
                raise _Incomplete
            if s[i] == "}":
                if not required <= seen:
                    raise _Invalid
                return i + 1
            if seen:
                if s[i] != ",":
                    raise _Invalid
                i = self._ws(s, i + 1)
                if i >= len(s):
                    raise _Incomplete
            if s[i] != '"':
                raise _Invalid
            close = s.find('"', i + 1)
            partial = s[i + 1:] if close < 0 else s[i + 1:close]
            free = extra is not False and extra is not None
            names = [p for p in props if p not in seen]
            if close < 0:
                if free or any(p.startswith(partial) for p in names):
                    raise _Incomplete
                raise _Invalid
            if partial in seen or (partial not in names and not free):
                raise _Invalid
            seen.add(partial)
            i = self._ws(s, close + 1)
            if i >= len(s):
                raise _Incomplete
            if s[i] != ":":
                raise _Invalid
            sub = props.get(partial, extra if isinstance(extra, Mapping) else {})
            i = self._ws(s, self._value(s, i + 1, sub, depth + 1))
            if i < len(s) and s[i] == "," and not free and len(seen) == len(props):
                raise _Invalid  # a closed object with every key written: only "}" can follow

    def _array(self, s: str, i: int, node: Mapping, depth: int) -> int:
        items = node.get("items") if isinstance(node.get("items"), Mapping) else {}
        i, n = self._ws(s, i + 1), 0
        while True:
            if i >= len(s):
                raise _Incomplete
            if s[i] == "]":
                return i + 1
            if n:
                if s[i] != ",":
                    raise _Invalid
                i += 1
            n += 1
            if n > self.max_items:
                raise _Invalid
            i = self._ws(s, self._value(s, i, items, depth + 1))

    def _value(self, s: str, i: int, node: Mapping, depth: int) -> int:
        if depth > _MAX_DEPTH:
            raise _Invalid
        node = self._resolve(node)
        i = self._ws(s, i)
        if i >= len(s):
            raise _Incomplete
        if "const" in node or "enum" in node:
            return self._literal(s, i, [node["const"]] if "const" in node else node["enum"])
        options = list(node.get("anyOf", ())) + list(node.get("oneOf", ()))
        if options:
            return self._first(s, i, options, depth)
        types = node.get("type")
        if isinstance(types, list):
            return self._first(s, i, [{**node, "type": t} for t in types], depth)
        ch = s[i]
        if types is None:  # any JSON value
            types = {"{": "object", "[": "array", '"': "string", "t": "boolean", "f": "boolean",
                     "n": "null"}.get(ch, "number")
        if types == "object" and ch == "{":
            return self._object(s, i, node, depth)
        if types == "array" and ch == "[":
            return self._array(s, i, node, depth)
        if types == "string":
            return self._string(s, i)
        if types in ("integer", "number") and (ch == "-" or ch.isdigit()):
            return self._number(s, i, types == "integer")
        if types in _LITERALS:
            return self._literal(s, i, _LITERALS[types])
        raise _Invalid

    def _first(self, s: str, i: int, options: list, depth: int) -> int:
        incomplete = False
        for option in options:
            try:
                return self._value(s, i, option, depth + 1)
            except _Incomplete:
                incomplete = True
            except _Invalid:
                pass
        raise _Incomplete if incomplete else _Invalid

    def _scan(self, text: str) -> str | None:
        try:
            end = self._value(text, 0, self.schema, 0)
        except _Incomplete:
            return "partial"
        except _Invalid:
            return None
        rest = text[end:]
        return "complete" if not rest.strip(_WS) and len(rest) <= self.max_blank else None

    def is_prefix(self, text: str) -> bool:
        """Whether `text` can still be completed into a value of the schema."""
        return self._scan(text) is not None

    def is_complete(self, text: str) -> bool:
        """Whether `text` is a value of the schema (a trailing number counts as ended)."""
        state = self._scan(text)
        return state == "complete" or (state == "partial" and text[-1:].isdigit() and self._scan(text + " ") == "complete")
