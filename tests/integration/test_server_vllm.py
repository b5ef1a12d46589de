"""`brickwork serve --executor vllm` (a subprocess, as a user starts it) answers the `openai` client: a planned
two-step task, a brick model, text completions, and token streaming from vLLM's engine."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

ROOT = Path(__file__).resolve().parents[2]
KEY = "vllm-key"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def client(vllm_available, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve-vllm") / "server.log"
    env = {**os.environ, "BRICKWORK_API_KEY": KEY, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VLLM_CPU_KVCACHE_SPACE": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "serve", "--executor", "vllm", "--port",
                                 str(port), "--log-level", "warning", "--batch-wait-ms", "10"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"brickwork serve --executor vllm did not start: {log.read_text()[-3000:]}")
        time.sleep(0.5)
    yield openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


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
