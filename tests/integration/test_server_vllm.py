"""`brickwork serve --executor vllm` (a subprocess, as a user starts it) answers the `openai` client: a planned
two-step task, a brick model, text completions, and token streaming from vLLM's engine."""

import pytest
from serve_process import start_serve, stop_serve

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
    stop_serve(proc, timeout=60)


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
