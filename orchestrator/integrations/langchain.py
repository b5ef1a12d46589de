"""LangChain integration: `ChatBrickwork`, a chat model backed by an Orchestrator, and `BrickworkPlanner`,
a Runnable that returns the plan alone.

    from orchestrator.integrations.langchain import ChatBrickwork
    chat = ChatBrickwork()                                   # the toy world; model=..., library=... for yours
    msg = chat.invoke("Reverse the text, then convert to uppercase.\\nInput: planet")
    msg.content                                              # "TENALP"
    msg.response_metadata["plan"], msg.response_metadata["bricks"]

The task is the last human message: its text is the instruction, and the text after a line starting with
`Input:` (or an `input=` keyword, or `additional_kwargs["input"]` on the message) is the task's input. The
messages before it are the history (system, human and ai messages; `bricks.prompt.Message`s): only the task is
planned, and every step's prompt carries the history as context, as earlier turns of the model's chat template
(a raw template shows it only where it has a `{history}` field, so the toy world answers as before). The plan
in `response_metadata["plan"]` records it.

`batch`/`abatch` plan all inputs together and run them in shared executor batches. `stream` runs the plan a
step at a time and yields a chunk per finished step (empty content, the step's trace in
`response_metadata["finished_steps"]`) and then the answer (executors do not stream tokens).
`with_structured_output(schema)` decodes JSON of the schema under a grammar (transformers executor only; see
`langchain_structured`); `bind_tools` raises `ToolsNotSupportedError` (the planner routes to bricks, the models
do not call tools).

Needs `langchain-core` (pip install 'brickwork[langchain]'); importing this module without it fails with a
one-line message naming the extra.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

try:
    from langchain_core.callbacks import CallbackManagerForLLMRun
    from langchain_core.language_models import BaseChatModel
    from langchain_core.language_models.base import LanguageModelInput
    from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
    from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
    from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable
except ImportError as e:  # pragma: no cover (the extra is part of the test install)
    from bricks.errors import MissingExtraError

    raise MissingExtraError("the LangChain integration needs langchain-core: pip install 'brickwork[langchain]'") from e
from pydantic import ConfigDict, Field, PrivateAttr

from orchestrator.integrations.langchain_messages import (
    TaskFailed,
    result_metadata,
    split_conversation,
    split_history,
    split_task,
    step_metadata,
    task_of,
)
from orchestrator.integrations.langchain_steps import run_by_step
from orchestrator.integrations.langchain_structured import (
    StructuredOutputError,
    ToolsNotSupportedError,
    structured_runnable,
)
from orchestrator.plan import Decoding, Plan
from orchestrator.result import Result

__all__ = ["ChatBrickwork", "BrickworkPlanner", "TaskFailed", "StructuredOutputError", "ToolsNotSupportedError",
           "split_task", "split_history", "split_conversation", "result_metadata"]

_ORCHESTRATORS: dict[tuple, Any] = {}
_PLANNERS: dict[tuple, Any] = {}
_OPEN_LOCK = threading.Lock()
DEFAULT_MODEL_NAME = "brickwork-toyworld"


def _shared_orchestrator(model: str | None, library: str | None, executor: str, decomposer: str | None):
    """One Orchestrator per (model, library, executor, decomposer) in this process, opened on first use."""
    key = (model, library, executor, decomposer)
    with _OPEN_LOCK:
        if key not in _ORCHESTRATORS:
            from orchestrator.api import Orchestrator

            _ORCHESTRATORS[key] = Orchestrator.from_pretrained(model, library, executor, decomposer=decomposer)
        return _ORCHESTRATORS[key]


class ChatBrickwork(BaseChatModel):
    """A LangChain chat model whose answers come from brickwork: plan, route to bricks, run.

    The Orchestrator is opened on first use (and shared by instances with the same settings), or given as
    `orchestrator=`. Each response carries `response_metadata["plan"]` (the plan as JSON),
    `["bricks"]` (brick keys per step) and `["steps"]` (the trace).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str | None = None
    """Hugging Face model folder (None: the toy world's model)."""
    library: str | None = None
    """Brick library folder (None: the toy world's library)."""
    executor: str = "transformers"
    decomposer: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    timeout: float | None = None
    """Accepted for LangChain compatibility; runs are local and not timed out."""
    max_retries: int = 0
    """Accepted for LangChain compatibility; a local run is not retried."""
    streaming: bool = False
    orchestrator: Any = Field(default=None, exclude=True)
    """An open `Orchestrator` to use instead of opening one from model/library."""

    _prefetched: dict[tuple, list[Result]] = PrivateAttr(default_factory=dict)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "brickwork"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "library": self.library, "executor": self.executor,
                "decomposer": self.decomposer}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any):
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "brickwork"
        model = kwargs.get("model")
        params["ls_model_name"] = model if isinstance(model, str) else (self.model or DEFAULT_MODEL_NAME)
        return params

    # -- the orchestrator --------------------------------------------------------------------------------
    @property
    def orc(self):
        """The Orchestrator this model runs on (opened on first use)."""
        if self.orchestrator is None:
            self.orchestrator = _shared_orchestrator(self.model, self.library, self.executor, self.decomposer)
        return self.orchestrator

    def as_planner(self) -> "BrickworkPlanner":
        """A Runnable that returns the plan this model would run, for pipelines that route themselves."""
        return BrickworkPlanner(library=self.library, decomposer=self.decomposer, orchestrator=self.orchestrator)

    def _decoding(self, kwargs: dict) -> Decoding | None:
        """The decoding settings asked for (None: the plan's own)."""
        base = self.orc.planner.decoding
        temperature = kwargs.get("temperature", self.temperature)
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        update = {}
        if temperature is not None and temperature != base.temperature:
            update["temperature"] = float(temperature)
        if max_tokens is not None and max_tokens != base.max_new_tokens:
            update["max_new_tokens"] = int(max_tokens)
        return Decoding(**{**base.model_dump(), **update}) if update else None

    def _plans(self, tasks: list[tuple[str, str, Any]], decoding: Decoding | None) -> list[Plan]:
        plans = self.orc.planner.plan_many(tasks)
        return [_with_decoding(p, decoding) for p in plans] if decoding is not None else plans

    def _run(self, tasks: list[tuple[str, str, Any]], decoding: Decoding | None) -> list[Result]:
        return self.orc.run_plans(self._plans(tasks, decoding))

    def _key(self, task: tuple[str, str, Any], decoding: Decoding | None) -> tuple:
        return (*task, decoding)

    def _prefetch(self, inputs: list, kwargs: dict) -> list[tuple]:
        """Plan and run every input together; each later `_generate` picks its result up. Best effort:
        inputs that cannot be read or planned are left to fail (or succeed) on their own."""
        decoding = self._decoding(kwargs)
        tasks = []
        for value in inputs:
            try:
                messages = self._convert_input(value).to_messages()
                tasks.append(split_conversation(messages, kwargs.get("input")))
            except Exception:  # noqa: BLE001 (reported by the per-input call)
                continue
        try:
            results = self._run(tasks, decoding) if tasks else []
        except Exception:  # noqa: BLE001 (one bad task: every input runs alone and fails alone)
            return []
        keys = []
        with self._lock:
            for task, result in zip(tasks, results):
                key = self._key(task, decoding)
                self._prefetched.setdefault(key, []).append(result)
                keys.append(key)
        return keys

    def _result(self, messages: list[BaseMessage], kwargs: dict) -> Result:
        task = split_conversation(messages, kwargs.get("input"))
        decoding = self._decoding(kwargs)
        with self._lock:
            ready = self._prefetched.get(self._key(task, decoding))
            result = ready.pop(0) if ready else None
            if ready == []:
                del self._prefetched[self._key(task, decoding)]
        return result if result is not None else self._run([task], decoding)[0]

    # -- LangChain's hooks -------------------------------------------------------------------------------
    def batch(self, inputs: list[LanguageModelInput], config: RunnableConfig | list[RunnableConfig] | None = None,
              *, return_exceptions: bool = False, **kwargs: Any) -> list[BaseMessage]:
        """Plan all inputs together and run them in shared executor batches (one callback run per input)."""
        keys = self._prefetch(list(inputs), kwargs) if len(inputs) > 1 else []
        try:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        finally:
            self._drop_unused(keys)

    async def abatch(self, inputs: list[LanguageModelInput],
                     config: RunnableConfig | list[RunnableConfig] | None = None, *, return_exceptions: bool = False,
                     **kwargs: Any) -> list[BaseMessage]:
        """The async form of `batch`: the shared run happens in a worker thread."""
        import asyncio

        keys = await asyncio.to_thread(self._prefetch, list(inputs), kwargs) if len(inputs) > 1 else []
        try:
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        finally:
            self._drop_unused(keys)

    def _drop_unused(self, keys: list[tuple]) -> None:
        """Results prefetched for inputs whose call never came (a failed conversion, a cache hit) are dropped."""
        with self._lock:
            for key in set(keys):
                self._prefetched.pop(key, None)

    def _usage(self, result: Result) -> dict[str, int]:
        """Tokens over all steps: every prompt the model was shown, every output it wrote (the executor's tokenizer;
        characters when it has none)."""
        tokenizer = getattr(self.orc.executor, "tokenizer", None)

        def count(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False).input_ids) if tokenizer is not None else len(text)

        prompts = [self.orc.render(result.plan, s.index, s.input) for s in result.steps if s.error is None]
        n_in, n_out = sum(map(count, prompts)), sum(count(s.output) for s in result.steps if s.error is None)
        return {"input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out}

    def _message(self, result: Result, stop: list[str] | None) -> tuple[str, dict[str, Any]]:
        if result.error is not None:
            raise TaskFailed(result)
        text = result.output
        for s in stop or self.stop or []:
            if s and s in text:
                text = text[: text.index(s)]
        meta = {"model_name": self.model or DEFAULT_MODEL_NAME, "model_provider": "brickwork",
                **result_metadata(result)}
        return text, meta

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        result = self._result(messages, kwargs)
        text, meta = self._message(result, stop)
        message = AIMessage(content=text, response_metadata=meta, usage_metadata=self._usage(result))
        return ChatResult(generations=[ChatGeneration(message=message)], llm_output={"model_name": meta["model_name"]})

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        """A chunk per finished step (empty content; its trace as a one-item list in
        `response_metadata["finished_steps"]`, so merged chunks list every step), the final step's text as its
        tokens come, then a last chunk with the rest of the answer and the whole result's metadata. The chunks'
        text adds up to what `invoke` answers (stop sequences held back until they are ruled out)."""
        from bricks.streaming import DeltaGate

        plan = self._plans([split_conversation(messages, kwargs.get("input"))], self._decoding(kwargs))[0]
        gate = DeltaGate(stop or self.stop or [])
        for item in run_by_step(self.orc, plan, stream_last=True):
            if isinstance(item, Result):
                result = item
                break
            if isinstance(item, str):
                text = gate.push(item)
                if not text:
                    continue
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
            else:
                chunk = ChatGenerationChunk(message=AIMessageChunk(
                    content="", response_metadata={"finished_steps": [step_metadata(item)]}))
            if run_manager:
                run_manager.on_llm_new_token(chunk.message.content, chunk=chunk)
            yield chunk
        text, meta = self._message(result, stop)
        rest = gate.rest(text) if result.error is None else text
        chunk = ChatGenerationChunk(message=AIMessageChunk(content=rest, response_metadata=meta,
                                                           usage_metadata=self._usage(result), chunk_position="last"))
        if run_manager:
            run_manager.on_llm_new_token(rest, chunk=chunk)
        yield chunk

    # -- what brickwork does not do, or does its own way --------------------------------------------------
    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Runnable:
        """Not supported: raises `ToolsNotSupportedError` (a NotImplementedError) saying why."""
        raise ToolsNotSupportedError(
            f"ChatBrickwork cannot bind {len(tools)} tool(s): brickwork's planner routes each step to bricks "
            "(LoRA adapters, FFN masks) and its models do not call tools; use with_structured_output(schema) for JSON")

    def with_structured_output(self, schema: Any = None, *, include_raw: bool = False, method: str | None = None,
                               strict: bool | None = None, **kwargs: Any) -> Runnable:
        """A Runnable whose answer is a value of `schema` (a pydantic model class: an instance of it; a JSON
        schema dict, TypedDict or OpenAI function: a dict), written by the base model under a JSON grammar made
        from the schema (constrained decoding with xgrammar, on either executor). `method` and `strict` are
        accepted for LangChain compatibility; every method is that constrained decoding."""
        if schema is None:
            raise StructuredOutputError("with_structured_output needs a schema: a pydantic model class or a JSON "
                                        "schema dict")
        return structured_runnable(self, schema, include_raw=include_raw)


def _with_decoding(plan: Plan, decoding: Decoding) -> Plan:
    return plan.model_copy(update={"steps": tuple(s.model_copy(update={"decoding": decoding}) for s in plan.steps)})


class BrickworkPlanner(RunnableSerializable[Any, Plan]):
    """A Runnable from a task (str with an optional `Input:` line, {"instruction", "input"}, messages) to its Plan.

    Loads no model: a Planner over the library and its index (or the planner of `orchestrator=`).
    `batch` plans every input in one index search.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    library: str | None = None
    decomposer: str | None = None
    orchestrator: Any = Field(default=None, exclude=True)

    @property
    def planner(self):
        if self.orchestrator is not None:
            return self.orchestrator.planner
        key = (self.library, self.decomposer)
        with _OPEN_LOCK:
            if key not in _PLANNERS:
                from orchestrator.api import make_decomposer
                from orchestrator.factory import open_planner

                _PLANNERS[key] = open_planner(self.library, decomposer=make_decomposer(self.decomposer))
            return _PLANNERS[key]

    def _plan_many(self, inputs: list[Any]) -> list[Plan | Exception]:
        tasks: list[tuple[str, str, Any] | Exception] = []
        for value in inputs:
            try:
                tasks.append(task_of(value))
            except Exception as e:  # noqa: BLE001 (this input's error)
                tasks.append(e)
        good = [t for t in tasks if not isinstance(t, Exception)]
        try:
            planned = iter(self.planner.plan_many(good))
            return [t if isinstance(t, Exception) else next(planned) for t in tasks]
        except Exception:  # noqa: BLE001 (plan one by one so each input keeps its own error)
            out: list[Plan | Exception] = []
            for t in tasks:
                try:
                    out.append(t if isinstance(t, Exception) else self.planner.plan(*t))
                except Exception as e:  # noqa: BLE001
                    out.append(e)
            return out

    def _plan_one(self, value: Any) -> Plan:
        result = self._plan_many([value])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Plan:
        return self._call_with_config(self._plan_one, input, config, run_type="parser")

    def batch(self, inputs: list[Any], config: RunnableConfig | list[RunnableConfig] | None = None, *,
              return_exceptions: bool = False, **kwargs: Any) -> list[Plan]:
        if not inputs:
            return []

        def plan_all(values: list[Any]) -> list[Plan | Exception]:
            out = self._plan_many(values)
            if not return_exceptions:
                first = next((r for r in out if isinstance(r, Exception)), None)
                if first is not None:
                    raise first
            return out

        return self._batch_with_config(plan_all, inputs, config, return_exceptions=return_exceptions,
                                       run_type="parser")
