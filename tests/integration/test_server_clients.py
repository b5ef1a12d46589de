"""`brickwork serve` started as a command (a subprocess on a free loopback port), called by LangChain's
ChatOpenAI; and the command's options, key from the environment included."""

import pytest
from serve_process import start_serve, stop_serve

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
langchain_openai = pytest.importorskip("langchain_openai")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")


KEY = "env-key"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The URL of `python -m orchestrator.cli serve` on the toy world, its API key from BRICKWORK_API_KEY."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log, "w") as out:
        try:
            proc, url = start_serve(["--log-level", "warning", "--batch-wait-ms", "10"], {"BRICKWORK_API_KEY": KEY},
                                    out, timeout=90)
        except RuntimeError as e:
            pytest.fail(f"{e}: {log.read_text()}")
    yield url
    stop_serve(proc)


@pytest.fixture(scope="module")
def chat(served):
    return langchain_openai.ChatOpenAI(base_url=served + "/v1", api_key=KEY, model="brickwork", max_retries=0,
                                       temperature=0)


def test_chat_openai_invoke_batch_and_stream(chat):
    msg = chat.invoke("Reverse the text, then convert to uppercase.\nInput: planet")
    assert msg.content == "TENALP"
    assert msg.usage_metadata["output_tokens"] == 12
    outs = [m.content for m in chat.batch(["Reverse the text.\nInput: garden", "Double every letter.\nInput: abc",
                                           "What is the sum?\nInput: 12 30"])]
    assert outs == ["nedrag", "aabbcc", "42"]
    chunks = chat.stream("Remove the vowels, then convert to uppercase.\nInput: planet")
    assert "".join(c.content for c in chunks) == "PLNT"


def test_chat_openai_with_a_brick_model_and_extra_body(served):
    caesar = langchain_openai.ChatOpenAI(base_url=served + "/v1", api_key=KEY, model="brick:caesar", max_retries=0,
                                         extra_body={"input": "abc"})
    assert caesar.invoke("Apply a Caesar shift of one.").content == "bcd"
    nope = langchain_openai.ChatOpenAI(base_url=served + "/v1", api_key=KEY, model="brick:nope", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        nope.invoke("Apply a Caesar shift of one.\nInput: abc")


def test_the_key_comes_from_the_environment(served):
    assert httpx.get(served + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(served + "/v1/models").status_code == 401


def test_serve_options_reach_the_config(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import orchestrator.integrations.server as server
    from orchestrator.api import Orchestrator
    from orchestrator.cli import app
    from orchestrator.integrations.server.config import ServerConfig

    seen = {}
    monkeypatch.setattr(server, "serve", lambda config, orc, **kw: seen.setdefault("config", config))
    fake = type("FakeOrchestrator", (), {"close": lambda self: None})
    monkeypatch.setattr(Orchestrator, "from_pretrained", lambda *a, **kw: (seen.setdefault("options", kw), fake())[1])
    monkeypatch.setenv("BRICKWORK_API_KEY", "from-env")
    result = CliRunner().invoke(app, ["serve", "--port", "9001", "--admin-key", "adm", "--admin-folder", str(tmp_path),
                                      "--max-batch", "8", "--batch-wait-ms", "2", "--max-queue", "16",
                                      "--prefix-cache-mib", "0.5"])
    assert result.exit_code == 0, result.output
    c = seen["config"]
    assert (c.host, c.port, c.api_key, c.admin_key, c.admin_folder) == ("127.0.0.1", 9001, "from-env", "adm", tmp_path)
    assert (c.max_batch, c.batch_wait_ms, c.max_queue, c.executor) == (8, 2.0, 16, "transformers")
    assert seen["options"] == {"prefix_cache_bytes": 2**19}  # the executor gets the prefix cache's size
    assert ServerConfig(executor="vllm", prefix_cache_mib=0).executor_options() == {}  # vLLM caches prefixes itself
    result = CliRunner().invoke(app, ["serve", "--admin-key", "from-env"])
    assert result.exit_code == 2 and "must differ" in result.output
    result = CliRunner().invoke(app, ["serve", "--executor", "tpu"])
    assert result.exit_code == 2 and "executor" in result.output
    monkeypatch.undo()
    result = CliRunner().invoke(app, ["serve", "--model", str(tmp_path / "no-model")])
    assert result.exit_code == 2 and result.output.startswith("error: ") and len(result.output.splitlines()) == 1
