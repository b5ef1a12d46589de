"""Batch jobs give no silent wrong answers: one job per output, the library pinned while a job runs, text that is
not UTF-8 and CSV quotes that never close are named, never a traceback or a quietly wrong row."""

import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from bricks.toyworld.paths import world_data_dir, world_library_dir
from orchestrator.integrations.batch import BatchError, BatchJob, identity_for, read_tasks, run_local
from orchestrator.integrations.batch_guard import lock_path
from orchestrator.integrations.batch_rows import encode_rows
from orchestrator.validation import InputError


class FakeOrchestrator:
    """Answers with the input reversed (no bricks); an empty input is refused, as a library that needs inputs does."""

    def run_batch(self, tasks):
        tasks = list(tasks)
        if any(not text for _, text in tasks):
            if len(tasks) > 1:
                raise InputError("a task has no input")
            raise InputError(f"the instruction {tasks[0][0]!r} needs an input (--input)")
        steps = [SimpleNamespace(instruction="x", bricks=[])]
        return [SimpleNamespace(output=text[::-1], error=None, steps=steps) for _, text in tasks]


def _write_rows(path, n, prefix="r"):
    path.write_text("".join(json.dumps({"id": f"{prefix}{i}", "instruction": "Reverse the text.", "input": f"w{i}"})
                            + "\n" for i in range(n)))
    return path


def _ident(inp, job="j1"):
    return {"job": job, "input_sha256": inp.sha256, "model_fingerprint": "m", "library_fingerprint": "l"}


def _ids(path):
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()]


# -- 1. one job per output ------------------------------------------------------------------------------------
def test_a_second_job_on_the_same_output_is_refused_naming_the_holder(tmp_path):
    inp = read_tasks(_write_rows(tmp_path / "in.jsonl", 6))
    out = tmp_path / "out.jsonl"
    first = BatchJob(inp, out, _ident(inp), chunk_size=4)
    with pytest.raises(BatchError) as refused:
        BatchJob(inp, out, _ident(inp), chunk_size=4)
    message = str(refused.value)
    assert message == (f"{out} is being written by another batch job (pid {os.getpid()}, lock {lock_path(out)}); "
                       "wait for it to end or choose another -o")
    run_local(first, FakeOrchestrator())
    first.close()
    assert not lock_path(out).exists()
    with BatchJob(inp, out, _ident(inp), chunk_size=4) as again:  # released: the rerun opens, writes nothing twice
        assert run_local(again, FakeOrchestrator()).written == 0
    assert sorted(_ids(out)) == [f"r{i}" for i in range(6)]


CHILD = """
import sys, time
from orchestrator.integrations.batch import BatchJob, read_tasks
inp = read_tasks(sys.argv[1])
job = BatchJob(inp, sys.argv[2], {"job": "j1", "input_sha256": inp.sha256, "model_fingerprint": "m",
                                  "library_fingerprint": "l"}, chunk_size=4)
job.write([{"id": r.id, "output": r.input[::-1], "steps": [], "error": None} for r in inp.rows[:4]])
print("holding", flush=True)
time.sleep(120)
"""


def test_the_lock_of_a_job_killed_with_sigkill_does_not_block_the_rerun(tmp_path):
    inp_path = _write_rows(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out.jsonl"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(inp_path), str(out)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert child.stdout.readline().strip() == "holding"
        inp = read_tasks(inp_path)
        with pytest.raises(BatchError, match=rf"out.jsonl is being written by another batch job \(pid {child.pid},"):
            BatchJob(inp, out, _ident(inp))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert lock_path(out).exists()  # left behind by kill -9, and nobody holds it
    with BatchJob(inp, out, _ident(inp), chunk_size=4) as job:
        assert job.done == {"r0", "r1", "r2", "r3"}
        assert run_local(job, FakeOrchestrator()).written == 6
    ids = _ids(out)
    assert sorted(ids) == sorted(f"r{i}" for i in range(10)) and len(ids) == 10


def test_the_cli_refuses_a_second_job_with_exit_code_2(tmp_path):
    from orchestrator.cli import app

    inp = tmp_path / "in.jsonl"
    inp.write_text(world_data_dir().joinpath("single_test.jsonl").read_text().splitlines()[0] + "\n")
    out = tmp_path / "out.jsonl"
    with BatchJob.open(inp, out):
        result = CliRunner().invoke(app, ["batch", str(inp), "-o", str(out), "--quiet"])
    assert result.exit_code == 2
    assert f"error: {out} is being written by another batch job (pid {os.getpid()}," in result.output
    assert out.read_text() == ""  # nothing written by the refused job


# -- 9. the library is pinned while a job runs ------------------------------------------------------------------
class EchoExecutor:
    """Answers every request with the keys of the bricks it runs: the output says where a row was routed."""

    def generate(self, requests):
        return [",".join(b.key for b in r.config.bricks) or "base" for r in requests]

    def close(self):
        pass


def _orchestrator(lib_path):
    from bricks.library import Library
    from index import HashingEmbedder
    from orchestrator.api import Orchestrator
    from orchestrator.library_index import open_index
    from orchestrator.planner import Planner

    lib = Library.open(lib_path)
    return Orchestrator(Planner(lib, open_index(lib, HashingEmbedder())), EchoExecutor())


ROUTE = {"caesar": "caesar@1", "devowel": "devowel@2", "double": "double@2", "subtract": "subtract@1",
         # base skills whose shipped emergent brick keeps >= 0.99 of the base's answers (not sort: 0.9898)
         "reverse": "emergent-reverse@1", "uppercase": "emergent-uppercase@1", "count": "emergent-count@1",
         "add": "emergent-add@1"}


@pytest.fixture
def world(tmp_path):
    """(library copy, input path, skill of each id): toy-world rows of every skill, interleaved."""
    lib = tmp_path / "lib"
    shutil.copytree(world_library_dir(), lib)
    rows = [json.loads(line) for line in world_data_dir().joinpath("single_test.jsonl").read_text().splitlines()]
    by_skill: dict[str, list] = {}
    for r in rows:
        by_skill.setdefault(r["skills"][0], []).append(r)
    picked = [group[i] for i in range(4) for group in by_skill.values()]  # 9 skills x 4, round robin
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in picked))
    return lib, inp, {r["id"]: r["skills"][0] for r in picked}


def _open(inp, out, lib_path, chunk_size=9):
    from bricks.library import Library

    tasks = read_tasks(inp)
    return BatchJob(tasks, out, identity_for(tasks, "sha256:model", lib_path, Library.open(lib_path)),
                    chunk_size=chunk_size)


def _rows(out):
    return {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}


@pytest.mark.parametrize("how", ["library.remove", "files deleted"])
def test_a_brick_removed_while_the_job_runs_stops_it_and_no_row_is_rerouted(world, tmp_path, how):
    from bricks.library import Library

    lib_path, inp, skill = world
    out = tmp_path / "out.jsonl"
    orc = _orchestrator(lib_path)

    def remove_after_first_chunk(done, total):
        if done == 9:
            if how == "library.remove":
                Library.open(lib_path).remove("devowel")  # another process, as far as the job can tell
            else:
                shutil.rmtree(lib_path / "bricks" / "devowel" / "v2")

    with _open(inp, out, lib_path) as job:
        with pytest.raises(BatchError) as stopped:
            run_local(job, orc, progress=remove_after_first_chunk)
    assert str(stopped.value) == (f"brick devowel@2 was removed from the library while the job ran; the 9 rows "
                                  f"written are kept in {out}; rerun to resume with the library as it is now")
    assert orc.reload_on_change is True  # pinned for the job only
    written = _rows(out)
    assert len(written) == 9  # the first chunk; the chunk routed to the removed brick is not written
    for row_id, row in written.items():  # every row as routed when the job started
        assert row["output"] == ROUTE.get(skill[row_id], "base") and row["error"] is None
    side = json.loads(out.with_name("out.jsonl.job.json").read_text())
    assert side["library_changes"][0]["rows_written"] == 9
    # the rerun resumes with the library as it is now: every id exactly once, the first 9 rows untouched
    with _open(inp, out, lib_path) as job:
        assert job.done == set(written)
        summary = run_local(job, _orchestrator(lib_path))
    assert summary.written == 27 and summary.skipped == 9
    rows = _rows(out)
    assert len(rows) == 36 and Counter(_ids(out)).most_common(1)[0][1] == 1
    assert {k: rows[k] for k in written} == written
    assert all(r["output"] != "devowel@2" for k, r in rows.items() if k not in written)


def test_routing_does_not_follow_library_updates_during_the_job(world, tmp_path):
    from bricks.library import Library

    lib_path, inp, skill = world
    src = tmp_path / "devowel-src"
    shutil.copytree(lib_path / "bricks" / "devowel" / "v2", src)
    orc = _orchestrator(lib_path)

    def update_after_first_chunk(done, total):
        if done == 9:
            assert Library.open(lib_path).update(src).key == "devowel@3"

    with _open(inp, tmp_path / "out.jsonl", lib_path) as job:
        summary = run_local(job, orc, progress=update_after_first_chunk)
    assert summary.written == 36 and summary.errors == 0
    rows = _rows(tmp_path / "out.jsonl")
    assert [r["output"] for k, r in rows.items() if skill[k] == "devowel"] == ["devowel@2"] * 4
    assert orc.run("Remove the vowels.", "planet").output == "devowel@3"  # after the job, it follows again


def test_an_orchestrator_over_another_library_is_refused(world, tmp_path):
    lib_path, inp, _ = world
    other = tmp_path / "other-lib"
    shutil.copytree(lib_path, other)
    with _open(inp, tmp_path / "out.jsonl", lib_path) as job:
        with pytest.raises(BatchError, match="is not the job's library"):
            run_local(job, _orchestrator(other))
    assert (tmp_path / "out.jsonl").read_text() == ""


# -- 11. text that is not UTF-8 -----------------------------------------------------------------------------------
def test_text_that_is_not_utf8_becomes_an_error_row_naming_the_id_and_field(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b"".join(line + b"\n" for line in [
        b'{"id": "ok", "instruction": "Reverse the text.", "input": "abc"}',
        b'{"id": "esc", "instruction": "Reverse \\udce9 the text.", "input": "abc"}',  # an escaped byte
        b'{"id": "half", "instruction": "Reverse the text.", "input": "ab\\ud800"}',  # half a surrogate pair
        b'{"id": "raw", "instruction": "Reverse the text.", "input": "caf\xe9"}',  # a raw byte
        b'{"id": "bad\\udcff", "instruction": "Reverse the text.", "input": "abc"}',
        b'{"id": "gold", "instruction": "Reverse the text.", "input": "abc", "output": "cb\\udce1"}',
    ]))
    with BatchJob(read_tasks(inp), tmp_path / "out.jsonl", _ident(read_tasks(inp))) as job:
        summary = run_local(job, FakeOrchestrator())
    rows = _rows(tmp_path / "out.jsonl")
    assert summary.errors == 5 and rows["ok"]["output"] == "cba"
    assert rows["esc"]["error"] == ("line 2 (id 'esc'): field instruction is not valid UTF-8 "
                                    "(bad byte 0xe9 at character 8)")
    assert rows["half"]["error"] == ("line 3 (id 'half'): field input is not valid UTF-8 "
                                     "(bad code point U+D800 at character 2)")
    assert rows["raw"]["error"] == "line 4 (id 'raw'): field input is not valid UTF-8 (bad byte 0xe9 at character 3)"
    assert rows["<line 5>"]["error"].startswith("line 5: id 'bad\\udcff' is not valid UTF-8 (bad byte 0xff")
    assert rows["gold"]["error"].startswith("line 6 (id 'gold'): field output is not valid UTF-8")
    (tmp_path / "out.jsonl").read_bytes().decode("utf-8")  # the output stays valid UTF-8


def test_parquet_binary_columns_are_decoded_or_named(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [b"p1", b"p2", b"p\xff"], "instruction": [b"Reverse the text.", b"Rev \xe9", b"x"],
                             "input": [b"ab", b"cd", b"ef"]}), tmp_path / "in.parquet")
    rows = read_tasks(tmp_path / "in.parquet").rows
    assert (rows[0].id, rows[0].instruction, rows[0].input, rows[0].error) == ("p1", "Reverse the text.", "ab", None)
    assert rows[1].error == "row 2 (id 'p2'): field instruction is not valid UTF-8 (bad byte 0xe9 at byte 4)"
    assert rows[2].id == "<row 3>" and rows[2].error == "row 3: id is not valid UTF-8: b'p\\xff'"


def test_an_error_message_with_a_lone_surrogate_is_written_escaped():
    blob = encode_rows([{"id": "a", "output": None, "steps": [], "error": "bad \udce9"}])
    assert json.loads(blob.decode("utf-8"))["error"] == "bad \udce9"


def test_a_row_without_input_is_refused_alone_when_the_orchestrator_needs_one(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": "a", "instruction": "Reverse the text.", "input": "abc"}\n'
                   '{"id": "b", "instruction": "Reverse the text."}\n')
    with BatchJob(read_tasks(inp), tmp_path / "out.jsonl", _ident(read_tasks(inp))) as job:
        run_local(job, FakeOrchestrator())
    rows = _rows(tmp_path / "out.jsonl")
    assert rows["a"]["output"] == "cba"
    assert rows["b"]["error"] == "InputError: the instruction 'Reverse the text.' needs an input (--input)"


def test_a_row_without_input_is_an_error_row_when_the_library_requires_inputs(world, tmp_path):
    lib_path, _, _ = world
    config = json.loads((lib_path / "library.json").read_text())
    (lib_path / "library.json").write_text(json.dumps({**config, "input_required": True}))
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": "none", "instruction": "Reverse the text."}\n'
                   '{"id": "null", "instruction": "Reverse the text.", "input": null}\n'
                   '{"id": "empty", "instruction": "Reverse the text.", "input": ""}\n'
                   '{"id": "word", "instruction": "Reverse the text.", "input": "abc"}\n')
    with _open(inp, tmp_path / "out.jsonl", lib_path) as job:
        run_local(job, _orchestrator(lib_path))
    rows = _rows(tmp_path / "out.jsonl")
    assert rows["none"]["error"] == ("line 1 (id 'none'): missing field input; this library's tasks need an input "
                                     '(give "input": "" to run on an empty one)') and rows["none"]["steps"] == []
    assert rows["null"]["error"].startswith("line 2 (id 'null'): missing field input")
    assert rows["empty"]["error"] is None and rows["word"]["error"] is None  # as `run --input ''` runs


# -- 16. CSV quotes that never close -------------------------------------------------------------------------------
def test_a_csv_quote_that_never_closes_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('id,instruction,input\n1,Reverse the text.,abc\n2,"Reverse the text.,def\n3,Sort,x\n4,Sort,y\n')
    with pytest.raises(BatchError) as refused:
        read_tasks(path)
    assert str(refused.value) == (f"{path}:3: a quoted field that starts on line 3 runs to the end of the file; "
                                  'close the quote (a quote inside a quoted field is written twice: "")')
    path.write_text('id,instruction,input\n1,"Reverse the text.,def\n3,Sort,x\n4,"Sort",y\n')
    with pytest.raises(BatchError, match=r"in.csv:2: a quoted field that starts on line 2 is not closed where "
                                         r"expected \(',' expected after '\"' on line 4\)"):
        read_tasks(path)


def test_a_csv_field_quoted_over_several_lines_still_reads(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('id,instruction,input\n1,"Reverse the text.","a ""quoted""\nline"\n2,Sort,x\n')
    rows = read_tasks(path).rows
    assert [(r.id, r.input, r.error) for r in rows] == [("1", 'a "quoted"\nline', None), ("2", "x", None)]
