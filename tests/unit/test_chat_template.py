"""Prompt formats: raw templates (with and without `{history}`), the model's chat template through
`apply_chat_template`, how a step's format is chosen, and the exact prompt an executor receives."""

from types import SimpleNamespace

import pytest

from bricks.errors import BrickworkError, ConfigError
from bricks.model_io import load_tokenizer
from bricks.prompt import (
    DEFAULT_TEMPLATE,
    ChatTemplate,
    Message,
    PromptTemplate,
    as_history,
    check_format,
    choose_template,
)
from bricks.toyworld.paths import world_model_dir
from index import BrickDocument, BrickIndex, HashingEmbedder
from orchestrator.api import Orchestrator
from orchestrator.plan import Plan
from orchestrator.planner import Planner
from orchestrator.validation import InputError
from policies import BASE_KEY, TopOne

CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def chat_tokenizer():
    tok = load_tokenizer(world_model_dir())
    tok.chat_template = CHAT
    return tok


@pytest.fixture(scope="module")
def raw_tokenizer():
    tok = load_tokenizer(world_model_dir())
    assert tok.chat_template is None
    return tok


class RecordingExecutor:
    """A fake executor that records every prompt and answers with a fixed text (no model)."""

    name = "recording"
    model_config = None

    def __init__(self, tokenizer=None, answer="ok"):
        if tokenizer is not None:
            self.tokenizer = tokenizer
        self.answer = answer
        self.prompts: list[str] = []

    def generate(self, requests):
        self.prompts += [r.prompt for r in requests]
        return [self.answer] * len(requests)

    def close(self):
        pass


class FakeLibrary:
    def __init__(self, bricks):
        self.bricks = bricks

    def list(self):
        return self.bricks


def _brick(brick_id, template=None, fmt=None):
    manifest = SimpleNamespace(prompt_template=template, **({"prompt_format": fmt} if fmt else {}))
    return SimpleNamespace(key=f"{brick_id}@1", id=brick_id, version=1, kind="lora", manifest=manifest)


def _orchestrator(executor, bricks=()):
    docs = [BrickDocument("caesar@1", ("Apply a Caesar shift of one.",)),
            BrickDocument("double@1", ("Double every letter.",)),
            BrickDocument(BASE_KEY, ("Reverse the text.", "Sort the letters."))]
    index = BrickIndex.build(docs, HashingEmbedder(128), source_fingerprint="f")
    lib = FakeLibrary(list(bricks) or [_brick("caesar"), _brick("double")])
    return Orchestrator(Planner(lib, index, routing=TopOne(threshold=0.3)), executor)


# -- values ---------------------------------------------------------------------------------------------------
def test_raw_template_is_unchanged_and_history_goes_only_where_asked():
    history = (Message("user", "hi"), Message("assistant", "hello"))
    assert DEFAULT_TEMPLATE.render("Reverse the text.", "abc") == "Reverse the text.\nIn: abc\nOut: "
    assert DEFAULT_TEMPLATE.render("Reverse the text.", "abc", history) == "Reverse the text.\nIn: abc\nOut: "
    with_history = PromptTemplate("{history}{instruction}\nIn: {input}\nOut: ")
    assert with_history.render("Sort.", "x", history) == "user: hi\nassistant: hello\nSort.\nIn: x\nOut: "
    assert with_history.render("Sort.", "x") == "Sort.\nIn: x\nOut: "
    # one pass: a field name inside a value is text, not a field
    assert DEFAULT_TEMPLATE.render("Say {input}.", "{history}") == "Say {input}.\nIn: {history}\nOut: "


def test_messages_and_history_are_checked():
    assert as_history(None) == ()
    assert as_history([Message("system", "s"), {"role": "user", "content": "u"}, ("assistant", "a")]) == \
        (Message("system", "s"), Message("user", "u"), Message("assistant", "a"))
    with pytest.raises(ConfigError, match="role 'tool' is not one of"):
        Message("tool", "x")
    with pytest.raises(ConfigError, match="history must be a sequence of messages, got str"):
        as_history("hello")
    with pytest.raises(ConfigError, match="history message 1 is int"):
        as_history([("user", "a"), 3])
    with pytest.raises(ConfigError, match="more than the maximum"):
        as_history([("user", "a")] * 65)
    with pytest.raises(ConfigError, match="prompt_format 'jinja' is not one of raw, chat"):
        check_format("jinja")
    with pytest.raises(AttributeError):
        Message("user", "a").content = "b"  # frozen


def test_chat_template_renders_the_documented_layout(chat_tokenizer, raw_tokenizer):
    chat = ChatTemplate(chat_tokenizer)
    history = (Message("user", "Sort the letters.\n\nplanet"), Message("assistant", "aelnpt"))
    assert chat.render("Reverse the text.", "abc") == "<|user|>Reverse the text.\n\nabc\n<|assistant|>"
    assert chat.render("Reverse the text.", "") == "<|user|>Reverse the text.\n<|assistant|>"
    assert chat.render("Reverse the text.", "abc", history) == (
        "<|user|>Sort the letters.\n\nplanet\n<|assistant|>aelnpt\n<|user|>Reverse the text.\n\nabc\n<|assistant|>")
    system = ChatTemplate(chat_tokenizer, system="Be exact.", user="{instruction}\nInput: {input}")
    assert system.render("Count.", "ab") == "<|system|>Be exact.\n<|user|>Count.\nInput: ab\n<|assistant|>"
    assert system != chat and ChatTemplate(chat_tokenizer) == chat
    with pytest.raises(ConfigError, match="has no chat template"):
        ChatTemplate(raw_tokenizer)


def test_choose_template_follows_the_documented_order(chat_tokenizer, raw_tokenizer):
    own = "Q: {instruction}\n{input}\nA: "
    assert isinstance(choose_template(None, None, chat_tokenizer), ChatTemplate)
    assert choose_template(None, own, chat_tokenizer) == PromptTemplate(own)  # the brick's trained template
    assert choose_template("raw", None, chat_tokenizer) == DEFAULT_TEMPLATE
    assert isinstance(choose_template("chat", own, chat_tokenizer), ChatTemplate)
    assert choose_template(None, None, raw_tokenizer) == DEFAULT_TEMPLATE
    assert choose_template(None, None, None) == DEFAULT_TEMPLATE  # an executor without a tokenizer
    with pytest.raises(ConfigError, match="has no chat template"):
        choose_template("chat", None, raw_tokenizer)


# -- what the executor receives -------------------------------------------------------------------------------
def test_executor_receives_the_chat_prompt_with_earlier_turns(chat_tokenizer):
    executor = RecordingExecutor(chat_tokenizer, answer="cba")
    orc = _orchestrator(executor)
    history = [("user", "Sort the letters.\nInput: planet"), ("assistant", "aelnpt")]
    res = orc.run("Reverse the text.", "abc", history=history)
    assert executor.prompts == [
        "<|user|>Sort the letters.\nInput: planet\n<|assistant|>aelnpt\n<|user|>Reverse the text.\n\nabc\n<|assistant|>"]
    assert res.output == "cba" and res.plan.history == as_history(history)
    assert Plan.from_json(res.plan.to_json()) == res.plan
    executor.prompts.clear()
    orc.run_plan(Plan.from_json(res.plan.to_json()))  # a replayed plan carries its history
    assert executor.prompts[0].startswith("<|user|>Sort the letters.")
    executor.prompts.clear()
    orc.run_batch([{"instruction": "Reverse the text.", "input": "abc", "history": history},
                   {"instruction": "Sort the letters.", "input": "zy"}])
    assert executor.prompts[0].startswith("<|user|>Sort the letters.\nInput: planet")
    assert executor.prompts[1] == "<|user|>Sort the letters.\n\nzy\n<|assistant|>"


def test_every_step_of_a_plan_gets_the_history(chat_tokenizer):
    executor = RecordingExecutor(chat_tokenizer, answer="x")
    orc = _orchestrator(executor)
    orc.run("Reverse the text, then sort the letters.", "abc", history=[("user", "before")])
    assert executor.prompts == ["<|user|>before\n<|user|>Reverse the text.\n\nabc\n<|assistant|>",
                                "<|user|>before\n<|user|>Sort the letters.\n\nx\n<|assistant|>"]


def test_raw_model_and_fake_executor_keep_the_raw_prompt(raw_tokenizer):
    for executor in (RecordingExecutor(raw_tokenizer), RecordingExecutor(None)):
        _orchestrator(executor).run("Reverse the text.", "abc", history=[("user", "earlier")])
        assert executor.prompts == ["Reverse the text.\nIn: abc\nOut: "]  # history ignored by the raw template


def test_brick_manifest_names_its_format(chat_tokenizer):
    own = "Q: {instruction}\n{input}\nA: "
    bricks = [_brick("caesar", fmt="raw"), _brick("double", template=own)]
    executor = RecordingExecutor(chat_tokenizer)
    orc = _orchestrator(executor, bricks)
    plan = orc.plan("Apply a Caesar shift of one, then double every letter.", "abc")
    assert [s.prompt_format for s in plan.steps] == ["raw", None]
    orc.run_plan(plan)
    assert executor.prompts == ["Apply a Caesar shift of one.\nIn: abc\nOut: ", "Q: Double every letter.\nok\nA: "]
    orc.prompt_format = "raw"  # the orchestrator's choice for steps that do not name one
    executor.prompts.clear()
    orc.run("Reverse the text.", "abc")
    assert executor.prompts == ["Reverse the text.\nIn: abc\nOut: "]
    bad = _orchestrator(RecordingExecutor(chat_tokenizer), [_brick("caesar", fmt="jinja"), _brick("double")])
    with pytest.raises(ConfigError, match="brick caesar@1 prompt_format 'jinja' is not one of raw, chat"):
        bad.plan("Apply a Caesar shift of one.", "abc")


def test_a_template_that_refuses_the_messages_fails_its_step_alone():
    tok = load_tokenizer(world_model_dir())
    tok.chat_template = ("{% if messages|length > 1 %}{{ raise_exception('only one message') }}{% endif %}"
                         "{{ messages[0]['content'] }}")
    executor = RecordingExecutor(tok)
    orc = _orchestrator(executor)
    bad, good = orc.run_batch([{"instruction": "Reverse the text.", "input": "a", "history": [("user", "x")]},
                               {"instruction": "Reverse the text.", "input": "b"}])
    assert bad.error is not None and "chat template cannot render 2 messages: only one message" in bad.error
    assert good.error is None and executor.prompts == ["Reverse the text.\n\nb"]


def test_bad_history_is_refused_in_one_line(chat_tokenizer):
    orc = _orchestrator(RecordingExecutor(chat_tokenizer))
    with pytest.raises(InputError, match="history message 0 contains a NUL character"):
        orc.run("Reverse the text.", "abc", history=[("user", "a\x00b")])
    with pytest.raises(BrickworkError, match="role 'robot'"):
        orc.run("Reverse the text.", "abc", history=[{"role": "robot", "content": "hi"}])


def test_a_prompt_that_starts_with_bos_gets_no_second_one():
    from bricks.generation import encode_prompt
    from bricks.model_io import load_tokenizer
    from bricks.toyworld.paths import world_model_dir

    tok = load_tokenizer(world_model_dir())
    plain = encode_prompt(tok, "Reverse the text.\nIn: abc\nOut: ")
    assert plain[0] == tok.bos_token_id  # the raw template gets its BOS from the tokenizer
    own = encode_prompt(tok, tok.bos_token + "Reverse the text.\nIn: abc\nOut: ")
    assert own == plain  # a chat template that writes its own BOS does not get a second one
