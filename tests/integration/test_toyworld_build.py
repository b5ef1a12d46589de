"""The toy world pipeline end to end, CI-sized (`--quick`): same code as the shipped world's full build."""

import json

from typer.testing import CliRunner

from bricks.toyworld.build import BuildConfig, build_world


def test_quick_build_writes_a_loadable_world(quick_world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bricks.library import Library

    out, report = quick_world
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / "model" / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.head_dim == 64 and model.config.tie_word_embeddings
    assert tok.decode(tok("Reverse the text.").input_ids, skip_special_tokens=True) == "Reverse the text."
    lib = Library.open(out / "library")
    assert sorted(b.id for b in lib.list()) == ["caesar", "devowel", "double", "subtract"]
    for b in lib.list():
        assert "exact_match_test" in b.manifest.metrics
        assert b.manifest.base_model.fingerprint == report["base_model"]["fingerprint"]
        assert set(b.manifest.examples) and b.manifest.description
    saved = json.loads((out / "report.json").read_text())
    assert set(saved["base_exact_match_test"]) == {"add", "caesar", "count", "devowel", "double", "reverse", "sort",
                                                   "subtract", "uppercase"}
    assert not (out.parent / "w.work" / "stage").exists()


def test_quick_build_is_deterministic(quick_world, tmp_path):
    out, _ = quick_world
    again = tmp_path / "w2"
    build_world(again, BuildConfig.quick(seed=5))
    for rel in ("model/model.safetensors", "data/single_test.jsonl", "data/compound_train.jsonl"):
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_eval_cli_json_and_bad_input(quick_world):
    from orchestrator.cli import app

    out, _ = quick_world
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "--model", str(out / "model"), "--data", str(out / "data" / "single_test.jsonl"),
                              "--skills", "reverse,caesar", "--json"])
    assert res.exit_code == 0, res.output
    scores = json.loads(res.stdout)["scores"]
    assert set(scores) == {"reverse", "caesar"} and all(v["total"] > 0 for v in scores.values())
    res = runner.invoke(app, ["eval", "--model", str(out / "model"), "--skills", "nope"])
    assert res.exit_code == 2 and "unknown skill id 'nope'" in res.stderr
    res = runner.invoke(app, ["eval", "--model", str(out / "missing")])
    assert res.exit_code == 2 and "does not exist" in res.stderr
    bad = out.parent / "bad.jsonl"
    bad.write_text('{"instruction": "Reverse the text.", "input": "abc"}\n')
    res = runner.invoke(app, ["eval", "--model", str(out / "model"), "--data", str(bad)])
    assert res.exit_code == 2 and "bad.jsonl:1" in res.stderr and "output" in res.stderr
