"""Conversations and LangChain extras on real models: a follow-up turn reaches a chat-template model with the
earlier turns in its prompt, the toy world answers as before, streaming yields a chunk per step, structured
output decodes JSON under a grammar, and bind_tools says why it cannot."""

import json
import shutil
from typing import Literal

import pytest

pytest.importorskip("langchain_core")

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from bricks.model_io import load_tokenizer  # noqa: E402
from bricks.prompt import DEFAULT_TEMPLATE, Message  # noqa: E402
from bricks.toyworld.paths import world_model_dir  # noqa: E402
from orchestrator.integrations.langchain import ChatBrickwork, StructuredOutputError, ToolsNotSupportedError  # noqa: E402
from orchestrator.plan import Plan  # noqa: E402

CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
CONVERSATION = [SystemMessage("Be exact."), HumanMessage("Sort the letters.\nInput: planet"), AIMessage("aelnpt"),
                HumanMessage("Reverse the text.\nInput: abc")]


@pytest.fixture(scope="module")
def toy():
    return ChatBrickwork()  # the shared toy world


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory):
    """The toy world's model in a tmp folder whose tokenizer has a chat template."""
    folder = tmp_path_factory.mktemp("chat_model")
    for f in world_model_dir().iterdir():
        shutil.copy(f, folder)
    tok = load_tokenizer(folder)
    tok.chat_template = CHAT
    tok.save_pretrained(folder)
    return folder


def test_follow_up_reaches_a_chat_model_with_the_earlier_turns(chat_model_dir):
    from orchestrator.api import Orchestrator

    with Orchestrator.from_pretrained(chat_model_dir) as orc:
        assert orc.executor.tokenizer.chat_template == CHAT
        prompts = []
        real = orc.executor.generate
        orc.executor.generate = lambda requests: prompts.extend(r.prompt for r in requests) or real(requests)
        msg = ChatBrickwork(orchestrator=orc, max_tokens=4).invoke(CONVERSATION)
        assert prompts[0] == ("<|system|>Be exact.\n<|user|>Sort the letters.\nInput: planet\n<|assistant|>aelnpt\n"
                              "<|user|>Reverse the text.\n\nabc\n<|assistant|>")
        plan = Plan.model_validate(msg.response_metadata["plan"])
        assert plan.history == (Message("system", "Be exact."), Message("user", "Sort the letters.\nInput: planet"),
                                Message("assistant", "aelnpt"))
        prompts.clear()
        orc.run("Reverse the text.", "abc")  # a first turn: no earlier messages in the prompt
        assert prompts == ["<|user|>Reverse the text.\n\nabc\n<|assistant|>"]


def test_toy_world_answers_a_follow_up_as_before(toy):
    first = toy.invoke("Reverse the text.\nInput: abc")
    follow = toy.invoke(CONVERSATION)
    assert first.content == follow.content == "cba"
    assert follow.response_metadata["plan"]["history"][2] == {"role": "assistant", "content": "aelnpt"}
    assert first.response_metadata["plan"]["history"] == []
    res = toy.orc.run("Reverse the text, then convert to uppercase.", "planet",
                      history=[("user", "Sort the letters.\nInput: planet"), ("assistant", "aelnpt")])
    assert res.output == "TENALP" and len(res.plan.history) == 2


def test_stream_yields_each_step_then_the_answer_token_by_token(toy):
    chunks = list(toy.stream("Reverse the text, then convert to uppercase.\nInput: planet"))
    steps = [c for c in chunks if "finished_steps" in c.response_metadata]
    assert [c.response_metadata["finished_steps"][0]["output"] for c in steps] == ["tenalp", "TENALP"]
    tokens = [c.content for c in chunks[1:-2]]  # after step 0's chunk: the last step's text, then its trace, the end
    assert len(tokens) >= 4 and "".join(tokens) + chunks[-1].content == "TENALP"  # token by token, adding up
    assert chunks[-1].chunk_position == "last"
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert [s["step"] for s in full.response_metadata["finished_steps"]] == [0, 1]
    # the first step runs on reverse's emergent brick, the second (on its output) on the whole model
    assert full.response_metadata["bricks"] == [["emergent-reverse@1"], []] and full.content == "TENALP"
    assert toy.invoke("Reverse the text, then convert to uppercase.\nInput: planet").content == "TENALP"
    stopped = "".join(c.content for c in toy.stream("Reverse the text.\nInput: abcdef", stop=["dc"]))
    assert stopped == toy.invoke("Reverse the text.\nInput: abcdef", stop=["dc"]).content == "fe"


def test_a_failed_step_ends_the_stream_with_task_failed(toy):
    from orchestrator.integrations.langchain import TaskFailed

    with pytest.raises(TaskFailed, match="step 0 failed"):
        list(toy.stream("Reverse the text, then sort the letters.\nInput: " + "x" * 400))  # over the context


def test_bind_tools_says_why(toy):
    with pytest.raises(ToolsNotSupportedError, match="planner routes each step to bricks") as info:
        toy.bind_tools([lambda a: a])
    assert isinstance(info.value, NotImplementedError)


class Verdict(BaseModel):
    label: Literal["yes", "no"]
    sure: bool


def test_structured_output_on_the_toy_world_names_what_is_missing(toy):
    with pytest.raises(StructuredOutputError, match="cannot write|no complete JSON"):
        toy.with_structured_output(Verdict).invoke("Is it sorted?\nInput: abc")
    with pytest.raises(StructuredOutputError, match="needs a schema"):
        toy.with_structured_output(None)


@pytest.fixture(scope="module")
def json_lm(tmp_path_factory):
    """A tiny random Llama over a character vocabulary of 48 tokens, every character of JSON among them."""
    import torch
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    chars = list('{}[]":,-. ') + list("0123456789") + list("abcdefghijklmnopqrstuvwxyz")
    vocab = {"<unk>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="<eos>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=512, eos_token_id=1)).eval()
    folder = tmp_path_factory.mktemp("json_lm")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


class ConstrainedExecutor:
    """The transformers executor's `complete_constrained` on a model folder, recording its prompts."""

    name = "constrained"

    def __init__(self, folder):
        from bricks.model_io import load_model

        self.model, self.tokenizer, self.prompts = load_model(folder), load_tokenizer(folder), []

    def complete_constrained(self, prompt, grammar):
        from bricks.constrained import generate_grammar, grammar_ebnf

        self.prompts.append(prompt)
        return generate_grammar(self.model, self.tokenizer, [prompt], grammar_ebnf(grammar))[0]


def test_structured_output_decodes_json_of_the_schema(json_lm):
    from types import SimpleNamespace

    executor = ConstrainedExecutor(json_lm)
    orc = SimpleNamespace(executor=executor, template=DEFAULT_TEMPLATE, prompt_format=None)
    chat = ChatBrickwork(orchestrator=orc)
    verdict = chat.with_structured_output(Verdict).invoke("Is it sorted?\nInput: abc")
    assert isinstance(verdict, Verdict)
    assert executor.prompts[0].startswith("Is it sorted?\nAnswer with JSON of this schema: {")
    assert executor.prompts[0].endswith("\nIn: abc\nOut: ")
    as_dict = chat.with_structured_output(Verdict.model_json_schema(), include_raw=True).invoke("Is it sorted?")
    assert as_dict["parsing_error"] is None and set(as_dict["parsed"]) == {"label", "sure"}
    assert json.loads(as_dict["raw"].content) == as_dict["parsed"]
