"""What crosses the engine process's pipe: errors keep their class and message (an APIError its status and
code), whatever their constructor takes; a class from outside brickwork and the builtins comes back as a
RuntimeError; texts keep their token counts."""

import pickle

import pytest

pytest.importorskip("pydantic")

from bricks.errors import BrickworkError, ConfigError  # noqa: E402
from bricks.generation import GeneratedText  # noqa: E402
from orchestrator.integrations.server.config import APIError, Overloaded  # noqa: E402
from orchestrator.integrations.server.engine import pack_error, unpack_error  # noqa: E402
from orchestrator.plan import PlanError  # noqa: E402


def _round_trip(e: BaseException) -> BaseException:
    return unpack_error(pickle.loads(pickle.dumps(pack_error(e))))


def test_errors_keep_their_class_and_message():
    for e in (ConfigError("bad value 'x'"), PlanError("the plan has 17 steps"), ValueError("v"), KeyError("caesar@9")):
        back = _round_trip(e)
        assert type(back) is type(e) and str(back) == str(e)
    assert isinstance(_round_trip(PlanError("p")), BrickworkError)


def test_api_errors_keep_status_code_and_headers():
    back = _round_trip(APIError(404, "unknown brick: nope", code="model_not_found", param="model"))
    assert (back.status, back.code, back.param, back.message) == (404, "model_not_found", "model", "unknown brick: nope")
    busy = _round_trip(Overloaded(5, 2))  # its own constructor takes other arguments
    assert busy.status == 429 and busy.headers == {"Retry-After": "2"} and busy.code == "queue_full"


def test_a_foreign_error_class_comes_back_as_runtime_error():
    class Strange(Exception):
        pass

    back = _round_trip(Strange("odd"))
    assert type(back) is RuntimeError and "Strange" in str(back) and "odd" in str(back)


def test_generated_texts_keep_their_counts_when_pickled():
    text = pickle.loads(pickle.dumps(GeneratedText("tenalp", 6, 31)))
    assert text == "tenalp" and (text.tokens, text.prompt_tokens) == (6, 31) and type(text) is GeneratedText
