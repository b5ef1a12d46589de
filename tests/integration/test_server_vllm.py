"""`brickwork serve --executor vllm` (a subprocess, as a user starts it) answers the `openai` client: a planned
two-step task, a brick model, text completions, and token streaming from vLLM's engine."""

import time

import pytest
from serve_process import alive, descendants, start_serve, stop_serve

pytestmark = pytest.mark.vllm
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

KEY = "vllm-key"


@pytest.fixture(scope="module")
def client(vllm_available, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-vllm") / "server.log"
    with open(log, "w") as out:
        try:
            proc, url = start_serve(["--executor", "vllm", "--log-level", "warning", "--batch-wait-ms", "10"],
                                    {"BRICKWORK_API_KEY": KEY, "VLLM_CPU_KVCACHE_SPACE": "1"}, out, timeout=300)
        except RuntimeError as e:
            pytest.fail(f"brickwork serve --executor vllm: {e}: {log.read_text()[-3000:]}")
    yield openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    engine = descendants(proc.pid)  # vLLM's engine core and workers
    assert engine, "vLLM runs its engine in processes of its own"
    stop_serve(proc, timeout=60)
    deadline = time.time() + 30
    while alive(engine) and time.time() < deadline:
        time.sleep(0.5)
    assert not alive(engine), f"vLLM processes outlived the server: {sorted(alive(engine))}"


def _chat(client, content, **kw):
    return client.chat.completions.create(model=kw.pop("model", "brickwork"),
                                          messages=[{"role": "user", "content": content}], **kw)


def test_planned_task_and_brick_model_on_vllm(client):
    r = _chat(client, "Reverse the text, then convert to uppercase.", extra_body={"input": "planet"})
    assert r.choices[0].message.content == "TENALP"
    assert [s["output"] for s in r.model_extra["brickwork"]["steps"]] == ["tenalp", "TENALP"]
    r = _chat(client, "Apply a Caesar shift of one.", model="brick:caesar", extra_body={"input": "xyz"})
    assert r.choices[0].message.content == "yza"
    r = client.completions.create(model="brickwork", prompt=["Reverse the text.\nInput: abc", "Double every letter.\n"
                                                             "Input: ab"])
    assert [c.text for c in r.choices] == ["cba", "aabb"]


def test_tokens_stream_from_the_vllm_engine(client):
    pieces = [c.choices[0].delta.content for c in _chat(client, "Double every letter.", extra_body={"input": "planet"},
                                                        stream=True) if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == "ppllaanneett" and len(pieces) >= 6


def test_concurrent_requests_join_running_engine_batches(client):
    """16 clients at once, with a 10 ms batch wait: several server batches run at once on vLLM and their requests
    join the engine's running batch; every answer is right."""
    from concurrent.futures import ThreadPoolExecutor

    words = ["planet", "garden", "silver", "window", "basket", "orange", "purple", "yellow"]
    base = httpx.get(str(client.base_url).replace("/v1/", "/health").rstrip("/")).json()
    assert base["concurrent_batches"] == 4 and base["engine_joined"] is not None

    def ask(i):
        word = words[i % len(words)]
        model, instruction, want = (("brick:caesar", "Apply a Caesar shift of one.",
                                     "".join(chr((ord(c) - 96) % 26 + 97) for c in word)) if i % 2 else
                                    ("brickwork", "Double every letter.", "".join(c + c for c in word)))
        r = _chat(client, instruction, model=model, extra_body={"input": word})
        return r.choices[0].message.content == want

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(ask, range(64)))
    after = httpx.get(str(client.base_url).replace("/v1/", "/health").rstrip("/")).json()
    assert after["engine_joined"] > base["engine_joined"]
