"""Checks on user input at the API edge: every failure is one line that names the bad value."""

from __future__ import annotations

from bricks.errors import BrickworkError

__all__ = ["InputError", "check_text", "MAX_INSTRUCTION_CHARS"]

MAX_INSTRUCTION_CHARS = 8192


class InputError(BrickworkError):
    """An instruction or input that brickwork will not run."""


def _preview(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def check_text(value: object, what: str, *, allow_empty: bool = False, max_chars: int = MAX_INSTRUCTION_CHARS) -> str:
    """`value` as a str: bytes must be UTF-8; empty/whitespace refused unless allowed; length capped."""
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{what} is not valid UTF-8 (bad byte 0x{value[e.start]:02x} at offset {e.start})") from None
    if not isinstance(value, str):
        raise InputError(f"{what} must be a string, got {type(value).__name__}")
    bad = next((i for i, ch in enumerate(value) if "\ud800" <= ch <= "\udfff"), None)
    if bad is not None:  # a lone surrogate: bytes that were not UTF-8 (e.g. a command-line argument), escaped
        code = ord(value[bad])
        byte = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"code point U+{code:04X}"
        raise InputError(f"{what} is not valid UTF-8 (bad {byte} at character {bad})")
    if not allow_empty and not value.strip():
        raise InputError(f"{what} is empty: {_preview(value)}")
    if len(value) > max_chars:
        raise InputError(f"{what} is {len(value)} characters long, more than the maximum of {max_chars}")
    if "\x00" in value:
        raise InputError(f"{what} contains a NUL character: {_preview(value)}")
    return value
