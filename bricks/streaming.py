"""Token streaming for batched generation: each row's new text, handed on as its tokens come.

`RowStreamer` is a transformers streamer (`generate(streamer=...)`) for a batch of any size. `generate` gives it
the prompts first, [N, T], then one token per row and step, [N]; a row's tokens after its end-of-sequence are
padding and are ignored. Each row's text so far is decoded from all its tokens (so characters made of several
tokens come out whole), and only what is new is handed to `on_delta(row, text)`; text that ends in an incomplete
character is held back until the character is complete.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

__all__ = ["RowStreamer", "TextDeltas", "DeltaGate", "end_tokens"]

log = logging.getLogger(__name__)

DeltaCallback = Callable[[int, str], None]


def end_tokens(eos) -> set[int]:
    """A tokenizer's or generation config's `eos_token_id` (an id, a list of ids or None) as a set of ids."""
    return set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])


class TextDeltas:
    """The new text of a growing token list: `push(ids)` returns what decoding `ids` adds to what was given."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = ""

    def push(self, ids: Sequence[int]) -> str:
        self.ids.extend(ids)
        return self._delta(final=False)

    def flush(self) -> str:
        """What is left at the end (an incomplete character included)."""
        return self._delta(final=True)

    def _delta(self, final: bool) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):
            return ""  # part of a multi-byte character: wait for the rest
        if not text.startswith(self.sent):  # a tokenizer that rewrites earlier text: send only the part that grew
            common = next((i for i, (a, b) in enumerate(zip(text, self.sent)) if a != b), min(len(text), len(self.sent)))
            self.sent = text[:common]
        delta, self.sent = text[len(self.sent):], text
        return delta


class RowStreamer:
    """A streamer for a batch whose row i is request `rows[i]`: `on_delta(rows[i], text)` as each row's text grows.

    `sent` ({request: text handed on}) may be shared by the streamers of one call: a batch run again (split after
    running out of memory) then hands on only what goes beyond what its first run already did.
    """

    def __init__(self, tokenizer, rows: Sequence[int], on_delta: DeltaCallback, eos_token_id=None,
                 sent: dict[int, str] | None = None) -> None:
        eos = eos_token_id if eos_token_id is not None else tokenizer.eos_token_id
        self.eos = end_tokens(eos)
        self.rows = list(rows)
        self.on_delta = on_delta
        self.texts = [TextDeltas(tokenizer) for _ in self.rows]
        self.done = [False] * len(self.rows)
        self.sent = {} if sent is None else sent
        self._prompt_seen = False

    def put(self, value) -> None:
        """One step's tokens [N] (or [N, 1]); the first call carries the prompts [N, T] and is skipped."""
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        tokens = value.reshape(len(self.rows), -1).tolist()  # [N, k]
        for i, ids in enumerate(tokens):
            if self.done[i]:
                continue
            kept = []
            for t in ids:
                if t in self.eos:
                    self.done[i] = True
                    break
                kept.append(t)
            if kept and self.texts[i].push(kept):
                self._hand_on(i)

    def end(self) -> None:
        """The end of generation: hand on whatever was held back."""
        for i, text in enumerate(self.texts):
            if text.flush():
                self._hand_on(i)

    def _hand_on(self, i: int) -> None:
        row, text = self.rows[i], self.texts[i].sent
        before = self.sent.get(row, "")
        if len(text) > len(before) and text.startswith(before):
            self.sent[row] = text
            self.on_delta(row, text[len(before):])


class DeltaGate:
    """Raw step text in, the part of the final answer it makes certain out.

    The answer is the step's output stripped of white space and cut at the first stop sequence, so leading
    white space is dropped, and trailing white space and a tail that may begin a stop sequence are held back
    until what follows shows whether they belong to the answer; `rest(final)` is what is left to send.
    """

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self.stops = [s for s in stops if s]
        self.raw = ""
        self.sent = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """The new certain text after `text` is appended ("" when nothing is certain yet)."""
        if self.stopped:
            return ""
        self.raw += text
        safe = self.raw.lstrip()
        cuts = [safe.index(s) for s in self.stops if s in safe]
        if cuts:
            safe, self.stopped = safe[: min(cuts)], True
        else:
            hold = max((n for s in self.stops for n in range(1, len(s)) if safe.endswith(s[:n])), default=0)
            safe = safe[: len(safe) - hold]
        safe = safe.rstrip()
        if len(safe) <= len(self.sent) or not safe.startswith(self.sent):
            return ""
        delta, self.sent = safe[len(self.sent):], safe
        return delta

    def rest(self, final: str) -> str:
        """What is left of the final answer after what was sent."""
        if final.startswith(self.sent):
            return final[len(self.sent):]
        log.warning("a streamed answer diverged from its final text; the final text was %d characters", len(final))
        return ""
