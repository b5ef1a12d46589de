"""Model-based decomposition: a language model writes the step list as JSON, under constrained decoding.

The model sees a short few-shot prompt and writes a JSON array of step instructions, e.g.
`["Sort the letters.", "Reverse the text."]`. Decoding is constrained by `StepListGrammar`, so the text is a
JSON array of strings of at most `max_steps` items or nothing. The result is then checked: it must parse, have
1..max_steps non-empty steps, and be grounded in the instruction (most words of every step occur in it, so a
weak planner cannot invent steps). Any failure falls back to another decomposer (rules by default), with the
reason logged and counted in `stats`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from policies.decompose import Decomposer, DecompositionError, RuleDecomposer, normalize_step

__all__ = ["StepListGrammar", "ModelDecomposer", "parse_step_list", "PLAN_PROMPT"]

log = logging.getLogger(__name__)

PLAN_PROMPT = (
    "Split the task into the steps to run one after another. Answer with a JSON array of step instructions.\n"
    "Task: Reverse the text, then convert to uppercase.\n"
    'Steps: ["Reverse the text.", "Convert to uppercase."]\n'
    "Task: Count the letters.\n"
    'Steps: ["Count the letters."]\n'
    "Task: {instruction}\n"
    "Steps: "
)

_WS = " \t\n"
_ESCAPES = '"\\/nt'


@dataclass(frozen=True)
class StepListGrammar:
    """The JSON shape `["step", "step", ...]`: 1..`max_steps` strings of at most `max_chars` characters."""

    max_steps: int = 8
    max_chars: int = 300
    max_blank: int = 2  # whitespace characters in a row outside strings

    def _scan(self, text: str) -> str | None:
        """The state after `text` ("start", "open", "str", "esc", "after", "comma", "done"), None if invalid."""
        state, items, length, blank = "start", 0, 0, 0
        for ch in text:
            blank = blank + 1 if ch in _WS and state not in ("str", "esc") else 0
            if blank > self.max_blank:
                return None  # a model that only writes whitespace never gets to the list
            if state == "start":
                if ch == "[":
                    state = "open"
                elif ch not in _WS:
                    return None
            elif state in ("open", "comma"):
                if ch == '"':
                    state, items, length = "str", items + 1, 0
                    if items > self.max_steps:
                        return None
                elif ch not in _WS:
                    return None
            elif state == "str":
                if ch == '"':
                    state = "after" if length else None  # an empty step is not a step
                    if state is None:
                        return None
                elif ch == "\\":
                    state = "esc"
                elif ord(ch) < 32 or length >= self.max_chars:
                    return None
                else:
                    length += 1
            elif state == "esc":
                if ch not in _ESCAPES:
                    return None
                state, length = "str", length + 1
            elif state == "after":
                if ch == ",":
                    if items >= self.max_steps:
                        return None
                    state = "comma"
                elif ch == "]":
                    state = "done"
                elif ch not in _WS:
                    return None
            elif state == "done":
                return None
        return state

    @property
    def json_schema(self) -> dict:
        """The JSON schema decoders constrain to (a fresh dict): an array of 1..max_steps non-empty strings of at
        most max_chars characters."""
        return {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": self.max_chars},
                "minItems": 1, "maxItems": self.max_steps}

    def is_prefix(self, text: str) -> bool:
        """Whether `text` can still be completed into a valid step list."""
        return self._scan(text) is not None

    def is_complete(self, text: str) -> bool:
        return self._scan(text) == "done"


def parse_step_list(text: str, max_steps: int) -> list[str]:
    """The steps of a model-written JSON array; a DecompositionError saying what is wrong otherwise."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DecompositionError(f"model plan is not JSON ({e.msg} at char {e.pos}): {text[:80]!r}") from None
    if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
        raise DecompositionError(f"model plan is not a JSON array of strings: {text[:80]!r}")
    steps = [normalize_step(s) for s in data if s.strip(" .,;:?!")]
    if not steps:
        raise DecompositionError("model plan has no step")
    if len(steps) > max_steps:
        raise DecompositionError(f"model plan has {len(steps)} steps, more than max_steps={max_steps}")
    return steps


_WORD = re.compile(r"[a-z0-9]+")


def _ungrounded(steps: list[str], instruction: str, share: float) -> str | None:
    known = set(_WORD.findall(instruction.lower()))
    for step in steps:
        words = _WORD.findall(step.lower())
        if words and sum(w in known for w in words) / len(words) < share:
            return step
    return None


# A language model that completes `prompt` under a grammar: (prompt, grammar) -> text.
ConstrainedLM = Callable[[str, StepListGrammar], str]
# The same for many prompts at once, batched: (prompts, grammar) -> texts.
ConstrainedBatchLM = Callable[[Sequence[str], StepListGrammar], list[str]]


@dataclass
class ModelDecomposer:
    """A language model writes the steps (constrained JSON); `fallback` splits when its answer is unusable.
    With `lm_many`, `split_many` decodes all instructions' plans in one batched call."""

    lm: ConstrainedLM
    fallback: Decomposer = field(default_factory=RuleDecomposer)
    max_steps: int = 8
    grounding: float = 0.5  # least share of a step's words that must occur in the instruction
    prompt: str = PLAN_PROMPT
    name: str = "model"
    stats: dict[str, int] = field(default_factory=lambda: {"model": 0, "fallback": 0})
    lm_many: ConstrainedBatchLM | None = None

    def split(self, instruction: str) -> list[str]:
        grammar = StepListGrammar(max_steps=self.max_steps)
        try:
            text = self.lm(self.prompt.format(instruction=instruction), grammar)
        except DecompositionError as e:
            return self._fall_back(instruction, e)
        return self._steps(instruction, text)

    def split_many(self, instructions: Sequence[str]) -> list[list[str]]:
        """`split` of each instruction; the model writes all plans in one call of `lm_many` when given."""
        if self.lm_many is None or len(instructions) < 2:
            return [self.split(instruction) for instruction in instructions]
        grammar = StepListGrammar(max_steps=self.max_steps)
        texts = self.lm_many([self.prompt.format(instruction=i) for i in instructions], grammar)
        return [self._steps(instruction, text) for instruction, text in zip(instructions, texts, strict=True)]

    def _steps(self, instruction: str, text: str) -> list[str]:
        try:
            steps = parse_step_list(text, self.max_steps)
            bad = _ungrounded(steps, instruction, self.grounding)
            if bad is not None:
                raise DecompositionError(f"model step {bad!r} is not grounded in the instruction")
        except DecompositionError as e:
            return self._fall_back(instruction, e)
        self.stats["model"] += 1
        return steps

    def _fall_back(self, instruction: str, reason: DecompositionError) -> list[str]:
        self.stats["fallback"] += 1
        log.info("model decomposition rejected (%s); using the %s decomposer", reason, self.fallback.name)
        return self.fallback.split(instruction)
