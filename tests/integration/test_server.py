"""`brickwork serve` on the toy world, called over loopback with the official `openai` client and raw HTTP:
answers, plans in the `brickwork` field, streaming, errors in OpenAI's shape, limits, batching, disconnects,
metrics and the admin endpoints."""

import asyncio
import shutil
import socket
import threading
import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from orchestrator.integrations.server import ServerConfig  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving `create_app(config, orchestrator)` on 127.0.0.1 until `stop()`."""

    def __init__(self, config, orchestrator) -> None:
        import uvicorn

        from orchestrator.integrations.server import create_app

        self.app = create_app(config, orchestrator)
        self.port = config.port
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state(self):
        return self.app.state.brickwork

    def start(self) -> "LiveServer":
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


API_KEY, ADMIN_KEY = "test-key", "admin-key"
TWO_STEPS = "Reverse the text, then convert to uppercase."
REVERSE = "Reverse the text.\nInput: "
WORDS = ["planet", "garden", "silver", "window", "basket", "orange", "purple", "yellow", "candle", "forest", "bridge",
         "castle", "dragon", "flower", "guitar", "hammer", "island", "jacket", "kitten", "lemon", "monkey", "needle",
         "pencil", "rabbit"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(library copy, admin folder holding a copy of caesar v1): admin tests change the copy, not the shipped one."""
    from bricks.toyworld.paths import world_library_dir

    root = tmp_path_factory.mktemp("serve")
    shutil.copytree(world_library_dir(), root / "library")
    admin = root / "admin"
    shutil.copytree(root / "library" / "bricks" / "caesar" / "v1", admin / "caesar")
    return root / "library", admin


@pytest.fixture(scope="module")
def server(world):
    from orchestrator import Orchestrator

    library, admin = world
    with Orchestrator.from_pretrained(library=library) as orc:
        config = ServerConfig(port=free_port(), api_key=API_KEY, admin_key=ADMIN_KEY, admin_folder=admin,
                              max_tokens=200, batch_wait_ms=20)
        live = LiveServer(config, orc).start()
        yield live
        live.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)


def _ask(client, content, model="brickwork", **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kw)


def _status(call):
    with pytest.raises(openai.APIStatusError) as e:
        call()
    return e.value.status_code, e.value.body


# -- answers ------------------------------------------------------------------------------------------------
def test_chat_plans_runs_and_returns_the_plan(client):
    r = _ask(client, TWO_STEPS, extra_body={"input": "planet"})
    assert r.choices[0].message.content == "TENALP" and r.choices[0].finish_reason == "stop"
    info = r.model_extra["brickwork"]
    assert [s["instruction"] for s in info["plan"]["steps"]] == ["Reverse the text.", "Convert to uppercase."]
    assert [s["output"] for s in info["steps"]] == ["tenalp", "TENALP"] and info["error"] is None
    assert r.usage.completion_tokens == 12 and r.usage.prompt_tokens > 12  # char tokenizer: 6 + 6 output tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_input_line_and_earlier_messages(client):
    r = client.chat.completions.create(model="brickwork", messages=[
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "Reverse the text.\nInput: x"},
        {"role": "assistant", "content": "x"},
        {"role": "user", "content": [{"type": "text",
                                      "text": "Remove the vowels, then convert to uppercase.\nInput: planet"}]}])
    assert r.choices[0].message.content == "PLNT"
    assert r.model_extra["brickwork"]["bricks"][0] == ["devowel@2"]


def test_brick_models_run_one_step_with_that_brick(client):
    for model in ("brick:caesar", "brick:caesar@1"):
        r = _ask(client, "Apply a Caesar shift of one.", model=model, extra_body={"input": "abc"})
        assert r.choices[0].message.content == "bcd"
        assert r.model_extra["brickwork"]["bricks"] == [["caesar@1"]]
    for wording in ("Rotate each letter by one (ROT1).", "Aply a Ceasar shfit of one."):  # an alias, typos
        r = _ask(client, wording, model="brick:caesar", extra_body={"input": "abc"})
        assert r.choices[0].message.content == "bcd", wording


def test_explicit_plan_and_brick_list(client, server):
    plan = server.state.orc.plan("Double every letter.", "abc")
    r = _ask(client, "ignored: the plan says what to do", extra_body={"plan": plan.model_dump(mode="json")})
    assert r.choices[0].message.content == "aabbcc"
    r = _ask(client, "Double every letter.", extra_body={"bricks": ["double"], "input": "xy"})
    assert r.choices[0].message.content == "xxyy" and r.model_extra["brickwork"]["bricks"] == [["double@2"]]


def test_completions_one_choice_per_prompt(client):
    prompts = ["Reverse the text.\nInput: abc", "What is the sum?\nInput: 12 30", "Double every letter.\nInput: abc"]
    r = client.completions.create(model="brickwork", prompt=prompts)
    assert [c.text for c in r.choices] == ["cba", "42", "aabbcc"] and [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.completion_tokens == 3 + 2 + 6
    r = client.completions.create(model="brick:caesar", prompt="Apply a Caesar shift of one.",
                                  extra_body={"input": "xyz"})
    assert r.choices[0].text == "yza"


def test_stop_and_max_tokens(client):
    r = _ask(client, "Reverse the text.\nInput: abcdef", stop=["c"])
    assert r.choices[0].message.content == "fed" and r.choices[0].finish_reason == "stop"
    r = _ask(client, "Reverse the text.\nInput: abcdef", max_tokens=2)
    assert r.choices[0].message.content == "fe" and r.choices[0].finish_reason == "length"
    r = _ask(client, "Reverse the text.\nInput: abcdef", temperature=0.0, top_p=1.0, seed=3, user="u1")
    assert r.choices[0].message.content == "fedcba"


def test_seeded_sampling_repeats(client):
    outs = {_ask(client, "Reverse the text.\nInput: abcdef", temperature=1.5, seed=7).choices[0].message.content
            for _ in range(2)}
    assert len(outs) == 1


def test_streaming_chat_and_completions(client, server):
    chunks = list(_ask(client, TWO_STEPS, extra_body={"input": "planet"}, stream=True,
                       stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "TENALP"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 12
    text = "".join(c.choices[0].text for c in client.completions.create(
        model="brickwork", prompt="Reverse the text.\nInput: abc", stream=True) if c.choices)
    assert text == "cba"
    raw = httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                     json={"model": "brickwork", "stream": True,
                           "messages": [{"role": "user", "content": "Reverse the text.\nInput: ab"}]})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_streaming_is_token_by_token_and_the_first_token_comes_before_the_answer(client):
    word = "planet"
    t0 = time.perf_counter()
    arrivals = []
    for c in _ask(client, "Double every letter.", extra_body={"input": word}, stream=True):
        if c.choices and c.choices[0].delta.content:
            arrivals.append((time.perf_counter() - t0, c.choices[0].delta.content))
    assert "".join(t for _, t in arrivals) == "".join(ch + ch for ch in word)
    assert len(arrivals) >= 6  # chunks as tokens come, not the answer in one piece
    assert arrivals[0][0] < arrivals[-1][0]
    text = "".join(c.choices[0].text for c in client.completions.create(
        model="brickwork", prompt=["Reverse the text.\nInput: abcdef", "Double every letter.\nInput: xyz"],
        stream=True) if c.choices and c.choices[0].index == 1)
    assert text == "xxyyzz"


def test_streaming_holds_back_a_stop_sequence_split_over_tokens(client):
    chunks = list(_ask(client, "Reverse the text.\nInput: abcdefgh", stop=["dc"], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hgfe"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_streaming_errors_before_the_first_token_are_http_errors(client):
    status, body = _status(lambda: list(_ask(client, "Reverse.", model="brick:nope", stream=True)))
    assert status == 404 and body["code"] == "model_not_found"


# -- errors -------------------------------------------------------------------------------------------------
def test_unknown_models_are_404(client):
    status, body = _status(lambda: _ask(client, "Reverse the text.\nInput: a", model="brick:nope"))
    assert status == 404 and body["code"] == "model_not_found" and "nope" in body["message"]
    status, body = _status(lambda: _ask(client, "Reverse the text.\nInput: a", model="gpt-4o"))
    assert status == 404 and body["param"] == "model"
    assert _status(lambda: _ask(client, "Reverse the text.\nInput: a", model="brick:caesar@9"))[0] == 404


def test_keys_are_checked(server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    status, body = _status(lambda: _ask(bad, "Reverse the text.\nInput: a"))
    assert status == 401 and body["code"] == "invalid_api_key" and set(body) == {"message", "type", "param", "code"}
    assert httpx.get(server.url + "/v1/models").status_code == 401
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200  # liveness needs no key


def test_bad_requests_are_400_in_openai_shape(client, server):
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    r = httpx.post(server.url + "/v1/chat/completions", content=b'{"model": "brickwork", "messages": [',
                   headers=headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    for kw, param in [(dict(max_tokens=100_000), "max_tokens"), (dict(n=2), "n"),
                      (dict(extra_body={"frobnicate": 1}), "frobnicate"),
                      (dict(tools=[{"type": "function", "function": {"name": "f"}}]), "tools")]:
        status, body = _status(lambda: _ask(client, "Reverse the text.\nInput: a", **kw))
        assert (status, body["param"]) == (400, param), (kw, body)
    status, body = _status(lambda: _ask(client, "x" * 9000))
    assert status == 400 and "maximum" in body["message"]


def test_a_body_over_the_limit_is_413(client):
    status, body = _status(lambda: _ask(client, "a" * 10_000_000))
    assert status == 413 and body["code"] == "request_too_large"


def test_a_failed_step_is_an_error_naming_the_step(client):
    status, body = _status(lambda: _ask(client, TWO_STEPS, extra_body={"input": "x" * 250}))
    assert status == 400 and body["code"] == "step_failed" and body["param"] == "step 0"
    assert body["message"].startswith("step 0 failed: InputError")


# -- batching, back-pressure, disconnects -------------------------------------------------------------------
def test_concurrent_requests_share_executor_runs(server):
    stats = server.state.batcher.stats
    before = (stats.batches, stats.jobs)
    words = WORDS

    async def main():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0) as c:
            rs = await asyncio.gather(*(c.chat.completions.create(
                model="brickwork", messages=[{"role": "user", "content": f"Reverse the text.\nInput: {w}"}])
                for w in words))
            return [r.choices[0].message.content for r in rs]

    assert asyncio.run(main()) == [w[::-1] for w in words]
    batches, jobs = stats.batches - before[0], stats.jobs - before[1]
    assert jobs == 24 and batches < 12, (batches, jobs)


def _hold(server):
    """Make the server's batch function wait for a gate; returns (gate, started, jobs seen, restore)."""
    batcher = server.state.batcher
    real, gate, started, seen = batcher.process, threading.Event(), threading.Event(), []

    def held(jobs, **kw):
        seen.append(len(jobs))
        started.set()
        gate.wait(10)
        return real(jobs, **kw)

    batcher.process = held

    def restore():
        gate.set()
        batcher.process = real

    return gate, started, seen, restore


def _post(server, content, timeout=30.0):
    return httpx.post(server.url + "/v1/chat/completions", timeout=timeout,
                      headers={"Authorization": f"Bearer {API_KEY}"},
                      json={"model": "brickwork", "messages": [{"role": "user", "content": content}]})


def test_a_full_queue_is_429_with_retry_after(server):
    batcher = server.state.batcher
    gate, started, _, restore = _hold(server)
    old_max, batcher.max_queue = batcher.max_queue, 1
    out = {}
    try:
        first = threading.Thread(target=lambda: out.setdefault("first", _post(server, f"{REVERSE}planet")))
        first.start()
        assert started.wait(10)
        second = threading.Thread(target=lambda: out.setdefault("second", _post(server, f"{REVERSE}garden")))
        second.start()
        deadline = time.time() + 10
        while batcher.depth < 1 and time.time() < deadline:
            time.sleep(0.01)
        refused = _post(server, "Reverse the text.\nInput: silver")
    finally:
        batcher.max_queue = old_max
        restore()
    first.join(10)
    second.join(10)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "queue_full"
    assert out["first"].json()["choices"][0]["message"]["content"] == "tenalp"
    assert out["second"].json()["choices"][0]["message"]["content"] == "nedrag"


def test_a_client_that_disconnects_is_dropped(server):
    stats = server.state.batcher.stats
    dropped = stats.dropped
    gate, started, seen, restore = _hold(server)
    try:
        first = threading.Thread(target=lambda: _post(server, "Reverse the text.\nInput: planet"))
        first.start()
        assert started.wait(10)
        with pytest.raises(httpx.TimeoutException):
            _post(server, "Reverse the text.\nInput: gone", timeout=0.5)
        time.sleep(0.2)
    finally:
        restore()
    first.join(10)
    assert _post(server, "Reverse the text.\nInput: window").json()["choices"][0]["message"]["content"] == "wodniw"
    assert stats.dropped == dropped + 1 and seen[:1] == [1]


def test_a_job_whose_client_left_while_its_batch_ran_is_not_generated(server):
    executor = server.state.orc.executor
    real_generate, calls = executor.generate, []

    def counting(requests, **kw):
        calls.append(len(requests))
        return real_generate(requests, **kw)

    executor.generate = counting
    dropped = server.state.batcher.stats.dropped
    gate, started, seen, restore = _hold(server)
    try:
        with pytest.raises(httpx.TimeoutException):  # its batch starts, then waits at the gate; the client leaves
            _post(server, "Reverse the text.\nInput: gone", timeout=0.5)
        assert started.is_set()
        time.sleep(0.2)
    finally:
        restore()
        deadline = time.time() + 10
        while server.state.batcher.stats.dropped == dropped and time.time() < deadline:
            time.sleep(0.05)
        executor.generate = real_generate
    assert server.state.batcher.stats.dropped == dropped + 1 and seen == [1]
    assert calls == []  # the batch was told its caller went away: no step of its plan ran
    assert httpx.get(server.url + "/health").json()["dropped"] == dropped + 1


# -- models, health, metrics, admin -------------------------------------------------------------------------
def test_models_health_and_metrics(client, server):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "brickwork" and {"brick:caesar", "brick:caesar@1", "brick:devowel@2"} <= set(ids)
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["gc_frozen"] > 0  # the model and library are out of the GC's way
    _ask(client, "Apply a Caesar shift of one.", model="brick:caesar", extra_body={"input": "abc"})
    after = httpx.get(server.url + "/health").json()
    assert after["batches"] > health["batches"] and after["busy_s"] > health["busy_s"]  # the batch's running time
    _ask(client, "Apply a Caesar shift of one.", model="brick:caesar", extra_body={"input": "abd"})
    again = httpx.get(server.url + "/health").json()  # the same prompt's first block, kept by the request before
    assert again["prefix_cache_hits"] > after["prefix_cache_hits"] and again["prefix_cache_hit_tokens"] >= 16
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    assert f"brickwork_prefix_cache_hits {float(again['prefix_cache_hits'])}" in text
    for needle in ('brickwork_requests_total{endpoint="/v1/chat/completions",status="200"}',
                   'brickwork_errors_total{code="404",endpoint="/v1/chat/completions"}',
                   "brickwork_request_latency_seconds_bucket", 'brickwork_tokens_total{kind="completion"}',
                   'brickwork_brick_uses_total{brick="caesar@1"}', 'brickwork_steps_total{status="ok"}',
                   "brickwork_batch_size_bucket"):
        assert needle in text, needle


def test_admin_update_rollback_remove(client, server):
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    url = server.url + "/admin/bricks"
    assert httpx.post(url, json={"path": "caesar"}, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 401
    r = httpx.post(url, json={"path": "../library/bricks/caesar/v1"}, headers=admin)
    assert r.status_code == 403 and r.json()["error"]["code"] == "path_not_allowed"
    r = httpx.post(url, json={"path": "caesar"}, headers=admin)
    assert r.status_code == 200 and r.json() == {"id": "caesar", "version": 2, "active": 2, "action": "updated"}
    assert "brick:caesar@2" in [m.id for m in client.models.list()]
    r = _ask(client, "Apply a Caesar shift of one.", model="brick:caesar", extra_body={"input": "abc"})
    assert r.choices[0].message.content == "bcd" and r.model_extra["brickwork"]["bricks"] == [["caesar@2"]]
    r = httpx.post(url + "/caesar/rollback", headers=admin)
    assert r.json()["active"] == 1
    r = httpx.delete(url + "/caesar", params={"version": 2}, headers=admin)
    assert r.status_code == 200 and r.json()["action"] == "removed"
    assert "brick:caesar@2" not in [m.id for m in client.models.list()]
    assert httpx.delete(url + "/nope", headers=admin).status_code == 404
