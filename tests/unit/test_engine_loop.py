"""The vLLM engine loop with a fake engine: requests of concurrent callers join the running batch, exclusive
calls wait for an idle engine, and failures stay with the requests they belong to."""

import threading
import time
from types import SimpleNamespace

import pytest

from orchestrator.executors.vllm.engine_loop import EngineLoop


class CharTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


class FakeEngine:
    """Writes each request's prompt (a string) one character per step, all running requests in every step."""

    def __init__(self, step_s=0.002):
        self.step_s = step_s
        self.requests = {}  # rid -> [text, written]
        self.aborted = []
        self.fail_next_step = False
        self.batch_sizes = []

    def add_request(self, rid, prompt, params, lora_request=None):
        if prompt == "refuse":
            raise ValueError("bad request")
        self.requests[rid] = [prompt, 0]

    def has_unfinished_requests(self):
        return bool(self.requests)

    def abort_request(self, rids):
        for rid in rids:
            self.aborted.append(rid)
            self.requests.pop(rid, None)

    def step(self):
        time.sleep(self.step_s)
        if self.fail_next_step:
            self.fail_next_step = False
            raise RuntimeError("engine step failed")
        self.batch_sizes.append(len(self.requests))
        outs = []
        for rid, entry in list(self.requests.items()):
            entry[1] += 1
            done = entry[1] >= len(entry[0])
            outs.append(SimpleNamespace(request_id=rid, finished=done,
                                        outputs=[SimpleNamespace(token_ids=[ord(c) for c in entry[0][:entry[1]]],
                                                                 finish_reason="length" if done else None)]))
            if done:
                del self.requests[rid]
        return outs


@pytest.fixture
def loop():
    engine = FakeEngine()
    loop = EngineLoop(engine, CharTokenizer(), idle_wait_s=0.01)
    loop.engine = engine
    yield loop
    loop.close()


def _params():
    return SimpleNamespace(output_kind=None)


def test_requests_of_concurrent_callers_join_the_running_batch(loop):
    long = loop.submit("x" * 40, _params())
    time.sleep(0.02)  # the long request is running
    deltas = []
    short = [loop.submit(w, _params(), on_delta=deltas.append) for w in ("abc", "de")]
    assert [f.result(30) for f in short] == ["abc", "de"] and long.result(30) == "x" * 40
    assert sorted(deltas) == ["a", "b", "c", "d", "e"]  # one character per step, each request's own
    assert loop.stats.joined >= 2 and loop.stats.peak_running == 3 and max(loop.engine.batch_sizes) == 3


def test_an_exclusive_call_runs_once_the_engine_is_idle(loop):
    running = loop.submit("y" * 30, _params())
    time.sleep(0.01)
    seen = loop.call(lambda engine: len(engine.requests), exclusive=True)
    assert seen == 0 and running.done()
    assert loop.call(lambda engine: "between steps") == "between steps"


def test_failures_stay_with_their_requests_and_the_loop_goes_on(loop):
    refused = loop.submit("refuse", _params())
    with pytest.raises(ValueError, match="bad request"):
        refused.result(30)

    def sink(text):
        raise OSError("client went away")

    broken, fine = loop.submit("abc", _params(), on_delta=sink), loop.submit("ok", _params())
    with pytest.raises(OSError, match="client went away"):
        broken.result(30)
    assert fine.result(30) == "ok" and loop.engine.aborted  # the failed request was aborted in the engine

    loop.engine.fail_next_step = True
    a = loop.submit("zzzz", _params())
    with pytest.raises(RuntimeError, match="engine step failed"):
        a.result(30)
    assert loop.submit("after", _params()).result(30) == "after"  # the loop serves on


def test_close_fails_what_is_running_and_refuses_more():
    engine = FakeEngine(step_s=0.01)
    loop = EngineLoop(engine, CharTokenizer(), idle_wait_s=0.01)
    slow = loop.submit("s" * 1000, _params())
    time.sleep(0.03)
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        slow.result(30)
    with pytest.raises(RuntimeError, match="closed"):
        loop.submit("x", _params())
    assert not threading.current_thread().name.startswith("brickwork-vllm")


def test_a_request_whose_caller_went_away_is_aborted_and_keeps_its_text(loop):
    gone = threading.Event()
    deltas = []

    def sink(text):
        deltas.append(text)
        if len(deltas) == 3:
            gone.set()  # the caller leaves after three characters

    left = loop.submit("q" * 500, _params(), on_delta=sink, cancelled=gone.is_set)
    stays = loop.submit("r" * 20, _params(), cancelled=lambda: False)
    text = left.result(30)
    assert text == "qqq" and loop.stats.aborted == 1 and len(loop.engine.aborted) == 1
    assert stays.result(30) == "r" * 20  # the other request ran to its end
    never = loop.submit("s" * 10, _params(), cancelled=lambda: True)
    assert never.result(30) == "" and loop.stats.added == 2  # gone before it was added: never reaches the engine
