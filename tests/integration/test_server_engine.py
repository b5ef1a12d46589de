"""`brickwork serve --engine-process`: the model runs in a process apart from the HTTP front. Answers, streaming,
errors, seeds and admin changes cross the pipe; a dead engine is a 503 in OpenAI's shape, and an engine whose
front was killed does not outlive it."""

import os
import shutil
import signal
import time

import pytest
from serve_process import alive, descendants, start_serve, stop_serve

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

KEY, ADMIN = "engine-key", "engine-admin"


def _start(tmp_path, *extra):
    from bricks.toyworld.paths import world_library_dir

    library = tmp_path / "library"
    if not library.exists():
        shutil.copytree(world_library_dir(), library)
    admin = tmp_path / "admin"
    if not admin.exists():
        shutil.copytree(library / "bricks" / "caesar" / "v1", admin / "caesar")
    log = open(tmp_path / "server.log", "a")
    try:
        proc, url = start_serve(["--engine-process", "--library", str(library), "--log-level", "warning",
                                 "--batch-wait-ms", "10", "--admin-key", ADMIN, "--admin-folder", str(admin), *extra],
                                {"BRICKWORK_API_KEY": KEY}, log, timeout=120)
    except RuntimeError as e:
        pytest.fail(f"{e}: {(tmp_path / 'server.log').read_text()[-3000:]}")
    return proc, url


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    proc, url = _start(tmp_path_factory.mktemp("engine"))
    yield proc, url
    stop_serve(proc)


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[1] + "/v1", api_key=KEY, max_retries=0)


def _ask(client, content, model="brickwork", **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kw)


def test_the_model_runs_in_an_engine_process_and_answers(served, client):
    proc, url = served
    health = httpx.get(url + "/health").json()
    assert health["engine_process"] is True and health["executor"] == "TransformersExecutor"
    assert alive(descendants(proc.pid))  # the engine: a child of the server process
    r = _ask(client, "Reverse the text, then convert to uppercase.", extra_body={"input": "planet"})
    assert r.choices[0].message.content == "TENALP"
    assert [s["output"] for s in r.model_extra["brickwork"]["steps"]] == ["tenalp", "TENALP"]
    assert r.usage.completion_tokens == 12 and r.usage.prompt_tokens > 12
    assert _ask(client, "Apply a Caesar shift of one.", model="brick:caesar",
                extra_body={"input": "abc"}).choices[0].message.content == "bcd"
    texts = [client.completions.create(model="brickwork", prompt=f"Reverse the text.\nInput: {w}").choices[0].text
             for w in ("garden", "moon")]
    assert texts == ["nedrag", "noom"]
    after = httpx.get(url + "/health").json()
    assert after["batches"] > health["batches"] and after["prefix_cache_hits"] is not None


def test_streaming_crosses_the_pipe_in_pieces(client):
    chunks = [c.choices[0].delta.content or "" for c in _ask(client, "Double every letter.",
                                                                extra_body={"input": "planet"}, stream=True)
              if c.choices]
    assert "".join(chunks) == "ppllaanneett" and sum(1 for c in chunks if c) > 1


def test_errors_keep_their_status_and_code(client):
    with pytest.raises(openai.NotFoundError):
        _ask(client, "Apply a Caesar shift of one.\nInput: abc", model="brick:nope")
    with pytest.raises(openai.BadRequestError) as e:  # a step that failed in the engine, named by the front
        _ask(client, "Reverse the text, then convert to uppercase.", extra_body={"input": "x" * 250})
    body = e.value.body
    assert body["code"] == "step_failed" and body["param"] == "step 0" and "InputError" in body["message"]


def test_seeded_sampling_repeats(client):
    ask = lambda: _ask(client, "Reverse the text.", extra_body={"input": "garden"}, temperature=1.5,  # noqa: E731
                       seed=7).choices[0].message.content
    assert ask() == ask()


def test_admin_changes_are_made_in_the_engine_and_seen_by_the_front(served, client):
    _, url = served
    admin = {"Authorization": f"Bearer {ADMIN}"}
    r = httpx.post(url + "/admin/bricks", json={"path": "caesar", "mode": "update"}, headers=admin)
    assert r.status_code == 200, r.text
    version = r.json()["version"]
    assert r.json()["active"] == version and version >= 2
    ids = {m.id for m in client.models.list()}
    assert f"brick:caesar@{version}" in ids
    assert _ask(client, "Apply a Caesar shift of one.", model=f"brick:caesar@{version}",
                extra_body={"input": "abc"}).choices[0].message.content == "bcd"
    r = httpx.post(url + "/admin/bricks/caesar/rollback", headers=admin)
    assert r.status_code == 200 and r.json()["active"] == version - 1
    r = httpx.delete(url + "/admin/bricks/caesar", params={"version": version}, headers=admin)
    assert r.status_code == 200 and r.json()["action"] == "removed"
    assert f"brick:caesar@{version}" not in {m.id for m in client.models.list()}
    with pytest.raises(openai.NotFoundError):
        _ask(client, "Apply a Caesar shift of one.", model=f"brick:caesar@{version}", extra_body={"input": "abc"})
    r = httpx.delete(url + "/admin/bricks/nope", headers=admin)
    assert r.status_code == 404 and r.json()["error"]["code"] == "brick_not_found"


def test_a_dead_engine_is_a_503_and_the_front_still_answers_health(tmp_path):
    proc, url = _start(tmp_path)
    try:
        engine = descendants(proc.pid)
        assert engine
        for pid in engine:
            os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 10
        while alive(engine) and time.time() < deadline:
            time.sleep(0.1)
        ask = {"model": "brickwork", "messages": [{"role": "user", "content": "Reverse the text.\nInput: ab"}]}
        r = httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, json=ask)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_down", r.text
        assert httpx.get(url + "/health").status_code == 200
    finally:
        stop_serve(proc)


def test_the_engine_does_not_outlive_a_killed_front(tmp_path):
    proc, url = _start(tmp_path)
    engine = descendants(proc.pid)
    assert engine
    proc.kill()
    proc.wait(10)
    deadline = time.time() + 20
    while alive(engine) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(engine)
