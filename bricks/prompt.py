"""The wire format: how an instruction and its input reach the model, and where the output starts."""

from __future__ import annotations

from dataclasses import dataclass

from bricks.errors import ConfigError

__all__ = ["PromptTemplate", "DEFAULT_TEMPLATE"]


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt template with `{instruction}` and `{input}` fields; the model's output follows it.

    The same template is used to train a brick and to run it, so that a routed step reaches the model in
    the form the brick was trained on.
    """

    text: str = "{instruction}\nIn: {input}\nOut: "

    def __post_init__(self) -> None:
        for field in ("{instruction}", "{input}"):
            if field not in self.text:
                raise ConfigError(f"prompt template {self.text!r} lacks the field {field}")

    def render(self, instruction: str, input: str = "") -> str:
        return self.text.replace("{instruction}", instruction).replace("{input}", input)


DEFAULT_TEMPLATE = PromptTemplate()
