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
