"""The command line's finish: --version, the bricks table, the shipped world guarded, progress by rows on batch
and eval (with the same outputs as without), and a README command table that renders."""

import json
import re
import tomllib
from pathlib import Path

from typer.testing import CliRunner

from orchestrator.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_version_is_the_one_written_in_pyproject():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0, res.output
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert res.stdout.strip() == f"brickwork {version}"


def test_bricks_list_is_a_table_and_json_stays_json():
    res = runner.invoke(app, ["bricks", "list"])
    assert res.exit_code == 0, res.output
    header = next(line for line in res.stdout.splitlines() if "brick" in line and "kind" in line)
    cells = [c.strip() for c in re.split(r"[┃│|]", header) if c.strip()]
    assert cells == ["brick", "kind", "description", "metrics"]
    rows = [line for line in res.stdout.splitlines() if re.match(r"[│|] [\w-]+@\d+ ", line)]
    shipped = ["caesar@1", "devowel@2", "double@2", "emergent-add@1", "emergent-count@1", "emergent-reverse@1",
               "emergent-sort@1", "emergent-uppercase@1", "subtract@1"]
    assert [r.split()[1] for r in rows] == shipped
    listed = json.loads(runner.invoke(app, ["bricks", "list", "--json"]).stdout)
    assert [f"{b['id']}@{b['version']}" for b in listed] == shipped


def test_toyworld_build_refuses_to_overwrite_the_shipped_world(monkeypatch):
    from bricks.toyworld import build
    from bricks.toyworld.paths import WORLD_DIR

    def no_build(*args, **kwargs):
        raise AssertionError("the shipped world was about to be rebuilt")

    monkeypatch.setattr(build, "build_world", no_build)
    for args in (["toyworld", "build", "--quick"], ["toyworld", "build", "--quick", "--out", str(WORLD_DIR)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        err = res.stderr.strip()
        assert err.startswith("error: toyworld build would overwrite the shipped world") and "\n" not in err
        assert "--out DIR" in err and "--overwrite-shipped" in err


def test_report_rows_runs_slices_in_order_and_reports_each():
    from orchestrator.cli.batch import report_rows

    class Fake:
        calls: list[int] = []

        def run_batch(self, tasks):
            tasks = list(tasks)
            self.calls.append(len(tasks))
            return [t.upper() for t in tasks]

    orc, seen = Fake(), []
    report_rows(orc, seen.append, 3)
    assert orc.run_batch(list("abcdefg")) == list("ABCDEFG")
    assert orc.calls == [3, 3, 1] and seen == [3, 3, 1]


def test_batch_progress_moves_by_slices_and_writes_what_a_quiet_run_writes(tmp_path, monkeypatch):
    import orchestrator.cli.batch as cli_batch

    rows = [("Reverse the text.", "planet"), ("Convert to uppercase.", "abc"), ("Sort the letters.", "dcba"),
            ("Apply a Caesar shift of one.", "abc"), ("Reverse the text, then convert to uppercase.", "xyz")]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": str(i), "instruction": a, "input": b}) + "\n"
                           for i, (a, b) in enumerate(rows)))
    slices: list[int] = []
    wrapped = cli_batch.report_rows
    monkeypatch.setattr(cli_batch, "PROGRESS_ROWS", 2)
    monkeypatch.setattr(cli_batch, "report_rows",
                        lambda orc, on_rows, n: wrapped(orc, lambda k: (slices.append(k), on_rows(k)), n))
    shown = runner.invoke(app, ["batch", str(inp), "-o", str(tmp_path / "shown.jsonl")])
    assert shown.exit_code == 0, shown.output
    assert slices == [2, 2, 1]  # the bar moved after every 2 rows of the 1024-row chunk
    assert "batch" in shown.stderr and "5/5" in shown.stderr and "rows 5" in shown.stdout
    quiet = runner.invoke(app, ["batch", str(inp), "-o", str(tmp_path / "quiet.jsonl"), "--quiet"])
    assert quiet.exit_code == 0 and slices == [2, 2, 1]  # no bar: whole chunks

    def outputs(name):
        return [(r["id"], r["output"], r["error"]) for r in map(json.loads, (tmp_path / name).read_text().splitlines())]

    assert outputs("shown.jsonl") == outputs("quiet.jsonl")
    assert [o for _, o, _ in outputs("shown.jsonl")] == ["tenalp", "ABC", "abcd", "bcd", "ZYX"]


def test_eval_progress_by_rows_scores_what_one_batch_scores(monkeypatch):
    from bricks.evaluation import exact_match_by_skill
    from bricks.model_io import load_model, load_tokenizer
    from bricks.rows import read_rows
    from bricks.toyworld.dataset import split_path
    from bricks.toyworld.paths import world_data_dir, world_model_dir
    from orchestrator.cli import world

    rows = [r.as_dict() for r in read_rows(split_path(world_data_dir(), "single", "test"))][::97][:7]
    net, tok = load_model(world_model_dir()), load_tokenizer(world_model_dir())
    advances: list[int] = []
    real = world.row_progress

    def recording(label, total, **kw):
        bar, task = real(label, total, **kw)
        update = bar.update
        bar.update = lambda t, advance=0, **k: (advances.append(advance), update(t, advance=advance, **k))
        return bar, task

    monkeypatch.setattr(world, "row_progress", recording)
    assert world._model_scores(net, tok, rows, batch_size=3) == exact_match_by_skill(net, tok, rows,
                                                                                    max_new_tokens=40)
    assert advances == [3, 3, 1]


def test_the_readme_command_table_renders():
    """GitHub splits a table row at every `|` not escaped as `\\|`, even inside code: each row has two cells."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index("| command | what it does |")
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    assert len(table) > 10
    for line in table:
        cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        assert len(cells) == 2, line
    commands = " ".join(table)
    for needle in ("library init", "bricks import-peft", "--version", "--overwrite-shipped"):
        assert needle in commands
