"""ChatBrickwork against langchain-tests' standard unit tests, and task parsing (no model is loaded)."""

import pytest

pytest.importorskip("langchain_core")
langchain_tests = pytest.importorskip("langchain_tests.unit_tests")

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage  # noqa: E402

from orchestrator.integrations.langchain import ChatBrickwork, split_task  # noqa: E402


class TestChatBrickworkStandard(langchain_tests.ChatModelUnitTests):
    @property
    def chat_model_class(self):
        return ChatBrickwork

    @property
    def chat_model_params(self):
        return {}

    @property
    def has_tool_calling(self):
        return False  # bind_tools raises ToolsNotSupportedError: the planner routes to bricks


def test_split_task_reads_the_input_line():
    assert split_task([HumanMessage("Reverse the text.\nInput: planet")]) == ("Reverse the text.", "planet")
    assert split_task([HumanMessage("Reverse the text.\n  input :abc")]) == ("Reverse the text.", "abc")
    assert split_task([HumanMessage("Sort the letters.")]) == ("Sort the letters.", "")


def test_split_task_takes_the_last_human_message_and_explicit_input_wins():
    messages = [SystemMessage("be brief"), HumanMessage("Sort the letters.\nInput: cab"), AIMessage("abc"),
                HumanMessage("Reverse the text.\nInput: xyz")]
    assert split_task(messages) == ("Reverse the text.", "xyz")
    assert split_task(messages, input="qq") == ("Reverse the text.\nInput: xyz", "qq")
    assert split_task([HumanMessage("Count the letters.", additional_kwargs={"input": "abcd"})]) == \
        ("Count the letters.", "abcd")
    with pytest.raises(ValueError, match="no messages"):
        split_task([])


def test_construction_loads_nothing():
    chat = ChatBrickwork(model="/no/such/model", temperature=0, max_tokens=10)
    assert chat.orchestrator is None
    assert chat._get_ls_params()["ls_model_name"] == "/no/such/model"


def test_earlier_messages_become_the_history():
    from langchain_core.messages import ChatMessage, ToolMessage

    from bricks.prompt import Message
    from orchestrator.integrations.langchain import split_conversation, split_history

    messages = [SystemMessage("be brief"), HumanMessage("Sort the letters.\nInput: cab"), AIMessage("abc"),
                HumanMessage("Reverse the text.\nInput: xyz")]
    assert split_history(messages) == (Message("system", "be brief"), Message("user", "Sort the letters.\nInput: cab"),
                                       Message("assistant", "abc"))
    assert split_conversation(messages)[:2] == ("Reverse the text.", "xyz")
    assert split_history([HumanMessage("only")]) == ()
    assert split_history([ChatMessage(role="user", content="a"), HumanMessage("b")]) == (Message("user", "a"),)
    with pytest.raises(ValueError, match="message 0 is a 'tool' message"):
        split_history([ToolMessage("42", tool_call_id="1"), HumanMessage("b")])


def test_bind_tools_and_structured_output_without_a_model():
    from pydantic import BaseModel

    from orchestrator.integrations.langchain import StructuredOutputError, ToolsNotSupportedError

    class Person(BaseModel):
        name: str
        age: int

    chat = ChatBrickwork(model="/no/such/model")
    with pytest.raises(ToolsNotSupportedError, match="cannot bind 1 tool"):
        chat.bind_tools([Person])
    assert chat.with_structured_output(Person, method="json_mode") is not None  # checked, nothing loaded
    assert chat.orchestrator is None
    with pytest.raises(ValueError, match="type 'date' is not one of"):
        chat.with_structured_output({"type": "date"})
    with pytest.raises(StructuredOutputError, match="needs a schema"):
        chat.with_structured_output(None)
