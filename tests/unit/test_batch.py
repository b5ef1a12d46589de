"""Batch jobs without a model: reading rows (bad ones become error rows), job identity, resuming, summaries."""

import json
from types import SimpleNamespace

import pytest

from orchestrator.integrations.batch import BatchError, BatchJob, read_tasks, run_chunk, run_local


class FakeOrchestrator:
    """Answers with the input reversed; an instruction containing 'boom' makes the whole batch raise."""

    def __init__(self):
        self.calls = []

    def run_batch(self, tasks):
        tasks = list(tasks)
        self.calls.append(len(tasks))
        if len(tasks) > 1 and any("boom" in i for i, _ in tasks):
            raise RuntimeError("batch failed")
        out = []
        for instruction, text in tasks:
            if "boom" in instruction:
                raise RuntimeError("this row explodes")
            brick = SimpleNamespace(key="caesar@1")
            steps = [SimpleNamespace(instruction=instruction, bricks=[brick] if "shift" in instruction else [])]
            error = "step 0 failed: bad" if "fail" in instruction else None
            out.append(SimpleNamespace(output="" if error else text[::-1], error=error, steps=steps))
        return out


def _write(path, lines):
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


def _rows(n, prefix="r"):
    return [json.dumps({"id": f"{prefix}{i}", "instruction": "Reverse the text.", "input": f"w{i}",
                        "output": f"{i}w"}) for i in range(n)]


def _job(tmp_path, inp, chunk_size=4, job="j1"):
    tasks = read_tasks(inp)
    ident = {"job": job, "input_sha256": tasks.sha256, "model_fingerprint": "m", "library_fingerprint": "l"}
    return BatchJob(tasks, tmp_path / "out.jsonl", ident, chunk_size=chunk_size)


def _run(tmp_path, inp, orc, chunk_size=4):
    """Open the job, run it, release its output."""
    with _job(tmp_path, inp, chunk_size=chunk_size) as job:
        return run_local(job, orc)


def _out(tmp_path):
    return [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]


def test_bad_rows_become_error_rows(tmp_path):
    inp = _write(tmp_path / "in.jsonl", [
        '{"id": "a", "instruction": "Reverse the text.", "input": "abc"}',
        '{"id": "b", "input": "abc"}',
        '{"id": "c", "instruction": "  "}',
        "{not json",
        "",
        '["a list"]',
        '{"instruction": "Reverse the text.", "input": 12}',
        b'{"id": "e", "instruction": "Reverse the text.", "input": "caf\xe9"}',
        '{"id": "f", "instruction": "Reverse the text.", "input": {"x": 1}}',
    ])
    rows = {r.id: r for r in read_tasks(inp).rows}
    assert rows["a"].error is None and rows["a"].input == "abc"
    assert "missing field instruction" in rows["b"].error
    assert "instruction is empty" in rows["c"].error
    assert "malformed JSON" in rows["<line 4>"].error
    assert "expected an object" in rows["<line 6>"].error
    assert rows["7"].error is None and rows["7"].input == "12"  # no id: the line number; numbers read as text
    assert rows["e"].error == "line 8 (id 'e'): field input is not valid UTF-8 (bad byte 0xe9 at character 3)"
    assert "must be a string" in rows["f"].error
    summary = _run(tmp_path, inp, FakeOrchestrator())
    out = {r["id"]: r for r in _out(tmp_path)}
    assert set(out) == set(rows) and summary.rows == len(rows) == summary.written
    assert out["a"] == {"id": "a", "output": "cba", "steps": [{"instruction": "Reverse the text.", "bricks": []}],
                        "error": None}
    assert out["b"]["output"] is None and out["b"]["steps"] == [] and "instruction" in out["b"]["error"]
    assert summary.errors == 6


def test_refusals_name_the_problem(tmp_path):
    with pytest.raises(BatchError, match="duplicate id 'x' \\(line 1 and line 3\\)"):
        read_tasks(_write(tmp_path / "d.jsonl", ['{"id": "x", "instruction": "a"}', '{"id": "y", "instruction": "b"}',
                                                 '{"id": "x", "instruction": "c"}']))
    bad_csv = tmp_path / "b.csv"
    bad_csv.write_bytes(b"id,instruction,input\n1,Reverse the text.,caf\xe9\n")
    with pytest.raises(BatchError, match="b.csv:2: not UTF-8 \\(bad byte 0xe9 on line 2\\)"):
        read_tasks(bad_csv)
    with pytest.raises(BatchError, match="no 'instruction' column"):
        read_tasks(_write(tmp_path / "n.csv", ["id,text", "1,abc"]))
    with pytest.raises(BatchError, match="no such file"):
        read_tasks(tmp_path / "missing.jsonl")
    with pytest.raises(BatchError, match="cannot tell the format"):
        read_tasks(_write(tmp_path / "x.txt", ["hello"]))
    with pytest.raises(BatchError, match="no rows"):
        read_tasks(_write(tmp_path / "e.jsonl", [""]))


def test_csv_and_parquet_read_like_jsonl(tmp_path):
    csv_path = _write(tmp_path / "in.csv", ["id,instruction,input,output", "1,Reverse the text.,abc,cba",
                                           "2,,abc,", '3,"Sort the letters, then count.",,'])
    rows = read_tasks(csv_path).rows
    assert [(r.id, r.instruction, r.input, r.gold) for r in rows[::2]] == \
        [("1", "Reverse the text.", "abc", "cba"), ("3", "Sort the letters, then count.", "", None)]
    assert "instruction is empty" in rows[1].error
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["p1", "p2"], "instruction": ["Reverse the text.", None], "input": ["ab", "x"]}),
                   tmp_path / "in.parquet")
    rows = read_tasks(tmp_path / "in.parquet").rows
    assert rows[0].input == "ab" and "missing field instruction" in rows[1].error


def test_resume_drops_a_partial_line_and_skips_done_ids(tmp_path):
    inp = _write(tmp_path / "in.jsonl", _rows(10))
    job = _job(tmp_path, inp)
    orc = FakeOrchestrator()
    job.write(run_chunk(orc, job.input.rows[:4]))
    job.close()
    with open(tmp_path / "out.jsonl", "ab") as f:  # a write cut short by kill -9
        f.write(b'{"id": "r4", "outp')
    job = _job(tmp_path, inp)
    assert job.done == {"r0", "r1", "r2", "r3"}
    assert (tmp_path / "out.jsonl").read_bytes().endswith(b"}\n")
    summary = run_local(job, orc)
    job.close()
    assert summary.skipped == 4 and summary.written == 6 and summary.accuracy == 1.0 and summary.gold_rows == 10
    ids = [r["id"] for r in _out(tmp_path)]
    assert sorted(ids) == sorted(f"r{i}" for i in range(10)) and len(ids) == 10
    # a chunk cut short is run again whole (the same batch as an uninterrupted run); only missing ids are written
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    (tmp_path / "out.jsonl").write_text("\n".join(lines[:6]) + "\n")
    orc.calls.clear()
    assert _run(tmp_path, inp, orc).written == 4 and orc.calls == [4, 2]
    assert _run(tmp_path, inp, orc).written == 0


def test_output_of_another_job_is_refused(tmp_path):
    inp = _write(tmp_path / "in.jsonl", _rows(3))
    _run(tmp_path, inp, FakeOrchestrator())
    with pytest.raises(BatchError, match="belongs to another job"):
        _job(tmp_path, inp, job="j2")
    (tmp_path / "out.jsonl.job.json").unlink()
    with pytest.raises(BatchError, match="not written by a brickwork batch job"):
        _job(tmp_path, inp)
    with pytest.raises(BatchError, match="is the input file"):
        tasks = read_tasks(inp)
        BatchJob(tasks, inp, {"job": "x"})


def test_a_failing_batch_is_isolated_row_by_row(tmp_path):
    inp = _write(tmp_path / "in.jsonl", [
        '{"id": "ok", "instruction": "Reverse the text.", "input": "abc"}',
        '{"id": "bad", "instruction": "boom now", "input": "abc"}',
        '{"id": "failed", "instruction": "fail here", "input": "abc"}',
        '{"id": "bricked", "instruction": "Apply a shift.", "input": "abc", "output": "nope"}',
    ])
    summary = _run(tmp_path, inp, FakeOrchestrator())
    out = {r["id"]: r for r in _out(tmp_path)}
    assert out["ok"]["output"] == "cba" and out["ok"]["error"] is None
    assert out["bad"]["error"] == "RuntimeError: this row explodes"
    assert out["failed"]["error"] == "step 0 failed: bad" and out["failed"]["output"] is None
    assert summary.errors == 2 and summary.brick_usage == {"base": 2, "caesar@1": 1}
    assert summary.gold_rows == 1 and summary.accuracy == 0.0
