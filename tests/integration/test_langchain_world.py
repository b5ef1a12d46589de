"""ChatBrickwork on the shipped toy world: langchain-tests' standard integration tests that apply to a local
model, batching, metadata, the plan Runnable, and a prompt | model | parser pipeline."""

import asyncio

import pytest

pytest.importorskip("langchain_core")
langchain_tests = pytest.importorskip("langchain_tests.integration_tests")

from langchain_core.output_parsers import StrOutputParser  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate  # noqa: E402

from orchestrator.integrations.langchain import BrickworkPlanner, ChatBrickwork, TaskFailed  # noqa: E402
from orchestrator.plan import Plan  # noqa: E402

pytest.importorskip("pytest_asyncio")
# the standard async tests run under pytest-asyncio (its strict mode leaves unmarked ones unrun); the mark is
# harmless on the sync tests, whose warning about it is silenced
pytestmark = [pytest.mark.asyncio, pytest.mark.filterwarnings("ignore:The test <Function:pytest.PytestWarning")]


class TestChatBrickworkIntegration(langchain_tests.ChatModelIntegrationTests):
    @property
    def chat_model_class(self):
        return ChatBrickwork

    @property
    def chat_model_params(self):
        return {}

    @property
    def has_tool_calling(self):
        return False  # bind_tools raises ToolsNotSupportedError: the planner routes to bricks

    @property
    def has_structured_output(self):
        return False  # the toy world's tokenizer cannot write JSON's braces and quotes (tested in test_history.py)


@pytest.fixture(scope="module")
def chat():
    return ChatBrickwork()


def test_invoke_carries_plan_and_bricks(chat):
    msg = chat.invoke("Remove the vowels, then convert to uppercase.\nInput: planet")
    assert msg.content == "PLNT"
    meta = msg.response_metadata
    assert meta["bricks"] == [["devowel@2"], []]
    assert Plan.model_validate(meta["plan"]).steps[0].instruction == "Remove the vowels."
    assert [s["output"] for s in meta["steps"]] == ["plnt", "PLNT"]


def test_batch_runs_together_and_matches_invoke(chat, monkeypatch):
    prompts = ["Reverse the text.\nInput: abc", "Double every letter.\nInput: abc", "What is the sum?\nInput: 12 30"]
    calls = []
    real = chat.orc.run_plans
    monkeypatch.setattr(chat.orc, "run_plans", lambda plans: calls.append(len(plans)) or real(plans))
    outs = [m.content for m in chat.batch(prompts)]
    assert calls == [3]  # one shared run, not one per input
    assert outs == ["cba", "aabbcc", "42"]
    assert [m.content for m in asyncio.run(chat.abatch(prompts))] == outs
    monkeypatch.undo()
    assert [chat.invoke(p).content for p in prompts] == outs


def test_stream_and_astream_end_with_the_answer(chat):
    chunks = list(chat.stream("Sort the letters.\nInput: planet"))
    assert "".join(c.content for c in chunks) == "aelnpt" and chunks[-1].chunk_position == "last"
    assert chunks[-1].response_metadata["bricks"] == [[]]

    async def collect():
        return [c async for c in chat.astream("Sort the letters.\nInput: planet")]

    assert "".join(c.content for c in asyncio.run(collect())) == "aelnpt"


def test_bad_input_fails_alone_in_a_batch(chat):
    out = chat.batch(["   ", "Reverse the text.\nInput: abc"], return_exceptions=True)
    assert isinstance(out[0], ValueError) and "instruction is empty" in str(out[0])
    assert out[1].content == "cba"
    assert issubclass(TaskFailed, RuntimeError)


def test_pipeline_prompt_model_parser(chat):
    prompt = ChatPromptTemplate.from_messages([("human", "{instruction}\nInput: {text}")])
    chain = prompt | chat | StrOutputParser()
    assert chain.invoke({"instruction": "Apply a Caesar shift of one.", "text": "abc"}) == "bcd"
    assert chain.batch([{"instruction": "Count the letters.", "text": "abcd"},
                        {"instruction": "Reverse the text, then convert to uppercase.", "text": "planet"}]) == \
        ["4", "TENALP"]


def test_planner_runnable_returns_plans(chat):
    planner = chat.as_planner()
    assert isinstance(planner, BrickworkPlanner)
    plan = planner.invoke("Remove the vowels, then reverse the text.\nInput: abc")
    assert isinstance(plan, Plan) and plan.input == "abc" and len(plan.steps) == 2
    assert [b.key for b in plan.steps[0].config.bricks] == ["devowel@2"]
    plans = planner.batch([{"instruction": "Double every letter.", "input": "x"}, "Sort the letters."])
    assert [len(p.steps) for p in plans] == [1, 1]
    out = planner.batch(["", "Sort the letters."], return_exceptions=True)
    assert isinstance(out[0], ValueError) and isinstance(out[1], Plan)
