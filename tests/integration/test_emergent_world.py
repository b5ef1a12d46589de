"""Emergent bricks end to end on the quick toy world: discover into a library, run masked and compact.

The quick world's model answers almost nothing right, so no brick of it passes the quality gate: the build step
refuses them all, and these tests add bricks with the gate off (`--min-retention 0 --min-support 0`)."""

import shutil

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app


@pytest.fixture(scope="module")
def world(quick_world, tmp_path_factory):
    out, _ = quick_world
    lib = tmp_path_factory.mktemp("emergent") / "library"
    shutil.copytree(out / "library", lib)

    data = out / "data" / "single_test.jsonl"
    for args in (["--mode", "supervised", "--skills", "reverse,count", "--budget", "0.25", "--criterion",
                  "contribution", "--scope", "global"],
                 ["--mode", "unsupervised", "--k", "4", "--prefix", "cluster-"]):
        result = CliRunner().invoke(app, ["bricks", "discover", "--data", str(data), "--model", str(out / "model"),
                                          "--library", str(lib), "--min-retention", "0", "--min-support", "0", *args])
        assert result.exit_code == 0, result.output
    return out, lib


def test_discover_writes_mask_bricks_and_indexes_them(world):
    from bricks.library import Library
    from index import SentenceTransformerEmbedder, load
    from orchestrator.library_index import index_fingerprint

    _, lib_path = world
    lib = Library.open(lib_path)
    masks = {b.id: b for b in lib.list() if b.kind == "ffn_mask"}
    assert set(masks) == {"emergent-reverse", "emergent-count", "cluster-p0", "cluster-p1", "cluster-p2", "cluster-p3"}
    assert masks["emergent-reverse"].manifest.metrics["density"] == pytest.approx(0.25, abs=0.01)
    assert masks["cluster-p0"].manifest.metrics["density"] == pytest.approx(0.25, abs=0.01)
    assert masks["emergent-count"].manifest.skills == ["count"] and masks["cluster-p1"].manifest.examples
    for b in masks.values():  # measured on every 5th row of each skill of --data (4 of the quick world's 20)
        assert b.manifest.metrics["rows_validation"] == 4.0 and 0 <= b.manifest.metrics["retention_validation"] <= 1
    index = load(lib_path / "index", SentenceTransformerEmbedder(), expected_fingerprint=index_fingerprint(lib))
    assert {b.key for b in masks.values()} <= set(index.keys())


def test_mask_steps_run_masked_and_compact_alike(world):
    from bricks.emergent import apply_masks
    from bricks.ffn_mask import FfnMaskBrick
    from bricks.generation import generate_texts
    from bricks.library import Library
    from orchestrator.executors.base import GenerationRequest
    from orchestrator.executors.transformers import TransformersExecutor
    from orchestrator.plan import BrickConfig, BrickRef, Decoding

    out, lib_path = world
    lib = Library.open(lib_path)
    mask = lib.get("cluster-p2")
    caesar = lib.get("caesar")
    ref = BrickRef(id=mask.id, version=mask.version, kind="ffn_mask")
    lora = BrickRef(id=caesar.id, version=caesar.version, kind="lora")
    d = Decoding(max_new_tokens=8)
    prompts = ["Reverse the text.\nIn: planet\nOut: ", "Count the letters.\nIn: kite\nOut: "]
    configs = [BrickConfig(bricks=(ref,)), BrickConfig(bricks=(ref,), mask_mode="ablate"),
               BrickConfig(bricks=(lora, ref)), BrickConfig()]
    reqs = [GenerationRequest(p, c, d) for c in configs for p in prompts]
    compact = TransformersExecutor(out / "model", lib, compact=True).generate(reqs)
    masked_ex = TransformersExecutor(out / "model", lib, compact=False)
    assert masked_ex.generate(reqs) == compact
    direct = TransformersExecutor(out / "model", lib)
    with apply_masks(direct.model, FfnMaskBrick.from_dir(mask.path, mask.manifest).masks(), "keep"):
        expected = generate_texts(direct.model, direct.tokenizer, prompts, max_new_tokens=8)
    assert compact[:2] == expected


@pytest.mark.parametrize("profile_split", [None, "single_train.jsonl"])
def test_analyze_writes_plots_matrices_and_summary(world, tmp_path, profile_split):
    import json

    out, _ = world
    extra = ["--profile-data", str(out / "data" / profile_split)] if profile_split else []
    result = CliRunner().invoke(app, ["analyze", "--data", str(out / "data" / "single_test.jsonl"), "--model",
                                      str(out / "model"), "--skills", "reverse,count,add", "--limit", "4", "--k", "2",
                                      "--out", str(tmp_path / "report"), *extra])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["skills"] == ["reverse", "count", "add"]  # the order --skills gave: rows of every matrix
    assert len(summary["ablation"]) == 3 and all(len(r) == 3 for r in summary["keep_only"])
    assert set(summary["bars"]) == set(summary["skills"]) and len(summary["sparsity_per_layer"]) == 2
    for name in ("sparsity.png", "specialization.png", "ablation.png", "keep_only.png", "summary.md"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert "## Ablation matrix" in (tmp_path / "report" / "summary.md").read_text()


def test_build_step_gates_the_quick_worlds_emergent_bricks(quick_world):
    from bricks.library import Library

    out, report = quick_world
    emergent = report["emergent_bricks"]
    assert set(emergent) == {"emergent-reverse", "emergent-uppercase", "emergent-sort", "emergent-count",
                             "emergent-add"}
    for metrics in emergent.values():  # 10 validation rows per skill: under min_support 20, never added
        assert metrics["rows_validation"] == 10.0 and metrics["added"] == 0.0 and metrics["density"] <= 0.3
    assert not any(b.kind == "ffn_mask" for b in Library.open(out / "library").list())


def test_discover_refuses_bad_options(world):
    out, lib = world
    for args, msg in ((["--min-retention", "1.5"], "--min-retention 1.5 must be in [0, 1]"),
                      (["--holdout-limit", "-1"], "--holdout-limit -1 must be >= 0"),
                      (["--criterion", "loud"], "unknown criterion 'loud'")):
        result = CliRunner().invoke(app, ["bricks", "discover", "--data", str(out / "data" / "single_test.jsonl"),
                                          "--model", str(out / "model"), "--library", str(lib), *args])
        assert result.exit_code == 2 and msg in result.stderr, result.output
