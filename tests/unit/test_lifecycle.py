"""The brick lifecycle on a library: versions, rollback, removal, verify, crashes, concurrent writers, growing a
running Orchestrator, incremental index updates, and the CLI's one-line errors."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from bricks import BaseModelRef, BrickManifest, Library, LibraryError, file_entry
from bricks.rows import InstructionRow, RowError
from index import BrickIndex, HashingEmbedder, load, open_or_build

BASE = BaseModelRef(name="tiny", fingerprint="sha256:aaa")


def mask_brick(root, brick_id, seed=0, description=None, examples=None):
    """A small ffn_mask brick folder (numpy only, so subprocesses stay light)."""
    import numpy as np
    from safetensors.numpy import save_file

    folder = root / f"src-{brick_id}-{seed}"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    save_file({f"layers.{i}": (rng.random(16) < 0.5).astype(np.uint8) for i in range(2)},
              str(folder / "mask.safetensors"))
    BrickManifest(id=brick_id, version=1, kind="ffn_mask", description=description or f"Does {brick_id} to text.",
                  examples=examples or [f"Please {brick_id} the input."], base_model=BASE,
                  files=[file_entry(folder, "mask.safetensors")], created=f"2026-01-01T00:00:{seed % 60:02d}+00:00",
                  ).save(folder / "brick.json")
    return folder


def _tree(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture
def lib(tmp_path):
    return Library.create(tmp_path / "lib", BASE, ["Reverse the text."])


def test_update_rollback_activate_remove_keep_versions(tmp_path, lib):
    lib.add(mask_brick(tmp_path, "b", seed=1))
    f1 = lib.fingerprint()
    v2 = lib.update(mask_brick(tmp_path, "b", seed=2))  # the source says version 1: the library numbers it
    assert v2.key == "b@2" and lib.get("b").key == "b@2" and [b.key for b in lib.list()] == ["b@2"]
    assert [b.version for b in lib.versions("b")] == [1, 2] and lib.fingerprint() != f1
    assert lib.rollback("b").key == "b@1" and lib.get("b").key == "b@1" and lib.fingerprint() == f1
    assert Library.open(lib.path).get("b").key == "b@1"  # the active version is on disk, not in this object
    with pytest.raises(LibraryError, match="no version before 1"):
        lib.rollback("b")
    assert lib.rollback("b", to=2).key == "b@2"
    assert lib.update(mask_brick(tmp_path, "b", seed=3)).key == "b@3"
    lib.remove("b", version=3)  # the active one: the highest left takes over
    assert lib.get("b").key == "b@2" and [b.version for b in lib.versions("b")] == [1, 2]
    with pytest.raises(KeyError, match=r"brick 'b' has no version 7 \(has \[1, 2\]\)"):
        lib.remove("b", version=7)
    lib.remove("b")
    assert lib.list() == [] and "b" not in lib
    again = lib.add(mask_brick(tmp_path, "b", seed=4))  # numbers are never reused: plans name one artifact
    assert again.key == "b@4"


def test_existing_id_refused_without_update_and_update_needs_an_id(tmp_path, lib):
    lib.add(mask_brick(tmp_path, "b"))
    before = _tree(lib.path)
    with pytest.raises(LibraryError) as e:
        lib.add(mask_brick(tmp_path, "b", seed=5))
    assert "'b' already exists" in str(e.value) and "update" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(LibraryError, match="no brick 'c' to update"):
        lib.update(mask_brick(tmp_path, "c"))
    assert _tree(lib.path) == before


def test_verify_finds_checksum_mismatch(tmp_path, lib):
    lib.add(mask_brick(tmp_path, "a"))
    lib.add(mask_brick(tmp_path, "b"))
    lib.update(mask_brick(tmp_path, "b", seed=9))
    report = lib.verify()
    assert report.ok and report.checked == ("a@1", "b@1", "b@2")
    stored = lib.path / "bricks" / "b" / "v1" / "mask.safetensors"  # an inactive version is checked too
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    report = lib.verify()
    assert not report.ok and report.problems == ("brick b@1: checksum mismatch for 'mask.safetensors'",)
    result = CliRunner().invoke(_app(), ["bricks", "verify", "--library", str(lib.path)])
    assert result.exit_code == 1 and "checksum mismatch for 'mask.safetensors'" in result.output


def test_failed_add_midway_leaves_library_unchanged(tmp_path, lib, monkeypatch):
    lib.add(mask_brick(tmp_path, "a"))
    before = _tree(lib.path)
    real = os.replace

    def crash(src, dst, *a, **k):
        if os.path.basename(str(src)).startswith(".add-"):
            raise OSError("disk full (simulated)")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        lib.add(mask_brick(tmp_path, "b"))
    with pytest.raises(OSError, match="simulated"):
        lib.update(mask_brick(tmp_path, "a", seed=3))
    monkeypatch.undo()
    assert _tree(lib.path) == before and lib.leftovers() == []
    assert [b.key for b in Library.open(lib.path).list()] == ["a@1"] and lib.verify().ok


def test_writer_killed_midway_leaves_a_consistent_library(tmp_path, lib):
    lib.add(mask_brick(tmp_path, "a"))
    src = mask_brick(tmp_path, "b")
    code = textwrap.dedent("""
        import os, sys
        from bricks import Library
        real = os.replace
        def killed(src, dst, *a, **k):
            if os.path.basename(str(src)).startswith(".add-"):
                os._exit(9)  # the writer dies after copying, before the rename: no cleanup runs
            return real(src, dst, *a, **k)
        os.replace = killed
        Library.open(sys.argv[1]).add(sys.argv[2])
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(lib.path), str(src)], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    again = Library.open(lib.path)
    assert [b.key for b in again.list()] == ["a@1"] and again.skipped == []
    report = again.verify()
    assert report.ok and len(report.leftovers) == 1 and report.leftovers[0].name.startswith(".add-")
    assert again.add(src).key == "b@1"  # the next writer cleans up under the lock
    assert again.leftovers() == [] and again.verify().ok


_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from bricks import Library
    from index import HashingEmbedder
    from orchestrator.lifecycle import sync_saved_index

    lib, embedder = Library.open(sys.argv[1]), HashingEmbedder()
    for folder in sys.argv[2:]:
        lib.add(Path(folder))
        sync_saved_index(lib, embedder)
""")


def test_two_processes_add_fifty_bricks_each(tmp_path, lib):
    from orchestrator.library_index import index_fingerprint, library_documents

    sources = [[str(mask_brick(tmp_path / f"w{w}", f"w{w}-b{i:02d}", seed=100 * w + i)) for i in range(50)]
               for w in range(2)]
    logs = [open(tmp_path / f"w{w}.log", "w+") for w in range(2)]  # files, not pipes: a full pipe blocks a writer
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(lib.path), *s], stderr=log)
             for s, log in zip(sources, logs)]
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0, 0], [(tmp_path / f"w{w}.log").read_text()[-2000:] for w in range(2)]
    again = Library.open(lib.path)
    assert len(again.list()) == 100 and again.skipped == [] and again.leftovers() == []
    report = again.verify()
    assert report.ok and len(report.checked) == 100
    saved = load(lib.path / "index", HashingEmbedder(), expected_fingerprint=index_fingerprint(again))  # not stale
    assert saved.documents() == {d.key: d.texts for d in library_documents(again)}


def test_index_sync_embeds_only_what_changed(tmp_path, lib):
    from orchestrator.library_index import index_fingerprint, library_documents

    for i in range(3):
        lib.add(mask_brick(tmp_path, f"b{i}"))
    emb = HashingEmbedder()
    index, rebuilt = open_or_build(lib.path / "index", lambda: library_documents(lib), emb, index_fingerprint(lib))
    assert rebuilt and emb.calls == 3 * 2 + 1
    lib.add(mask_brick(tmp_path, "new"))
    lib.remove("b0")
    emb.calls = 0
    index, rebuilt = open_or_build(lib.path / "index", lambda: library_documents(lib), emb, index_fingerprint(lib))
    assert rebuilt and emb.calls == 2  # only the new brick's description and example
    fresh = BrickIndex.build(library_documents(lib), HashingEmbedder(), source_fingerprint="x")
    assert index.documents() == fresh.documents()
    assert index.search("Please new the input.")[0].key == "new@1"


class EchoExecutor:
    """Answers every request with the keys of the bricks it would run: enough to watch routing change."""

    def generate(self, requests):
        return [",".join(b.key for b in r.config.bricks) or "base" for r in requests]

    def close(self):
        pass


def _orchestrator(lib):
    from orchestrator.api import Orchestrator
    from orchestrator.library_index import open_index
    from orchestrator.planner import Planner

    return Orchestrator(Planner(lib, open_index(lib, HashingEmbedder())), EchoExecutor())


def test_running_orchestrator_follows_another_writer(tmp_path, lib):
    lib.add(mask_brick(tmp_path, "alpha"))
    orc = _orchestrator(Library.open(lib.path))
    ask = "Please gamma the input."
    assert orc.run(ask).output != "gamma@1"
    writer = Library.open(lib.path)  # another process, as far as the orchestrator can tell
    writer.add(mask_brick(tmp_path, "gamma"))
    assert orc.run(ask).output == "gamma@1"  # no restart, no explicit call
    writer.update(mask_brick(tmp_path, "gamma", seed=2))
    res = orc.run(ask)
    assert res.output == "gamma@2" and [b.key for b in res.steps[0].bricks] == ["gamma@2"]
    assert res.plan.steps[0].config.bricks[0].version == 2
    writer.rollback("gamma")
    assert orc.run(ask).output == "gamma@1"
    writer.remove("gamma")
    assert orc.run(ask).output != "gamma@1" and "gamma@1" not in orc.planner.index.keys()


def test_explicit_orchestrator_lifecycle_calls(tmp_path, lib):
    lib.add(mask_brick(tmp_path, "alpha"))
    orc = _orchestrator(lib)
    orc.reload_on_change = False
    assert orc.add_brick(mask_brick(tmp_path, "gamma")).key == "gamma@1"
    assert orc.plan("Please gamma the input.").steps[0].config.bricks[0].key == "gamma@1"
    assert orc.update_brick(mask_brick(tmp_path, "gamma", seed=3)).key == "gamma@2"
    assert orc.plan("Please gamma the input.").steps[0].config.bricks[0].key == "gamma@2"
    assert orc.rollback_brick("gamma").key == "gamma@1"
    assert orc.plan("Please gamma the input.").steps[0].config.bricks[0].key == "gamma@1"
    orc.remove_brick("gamma")
    assert all(b.id != "gamma" for b in orc.plan("Please gamma the input.").steps[0].config.bricks)
    assert not orc.reload().changed


def test_training_rows_without_outputs_refused():
    from bricks.training.trainer import check_training_rows

    with pytest.raises(RowError, match="training row '7' has no output"):
        check_training_rows([InstructionRow("7", "Do it.", "x", "")])
    with pytest.raises(RowError, match="no training rows"):
        check_training_rows([])


def test_lora_targets_come_from_the_model():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from bricks.training.trainer import lora_target_modules

    llama = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=1, num_key_value_heads=1, vocab_size=16))
    assert lora_target_modules(llama) == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=1, vocab_size=16, n_positions=16))
    assert set(lora_target_modules(gpt2)) == {"c_attn", "c_proj", "c_fc"}


def _app():
    from orchestrator.cli import app

    return app


def test_cli_lifecycle_and_one_line_errors(tmp_path, lib):
    runner, app = CliRunner(), _app()
    opt = ["--library", str(lib.path)]
    assert runner.invoke(app, ["bricks", "add", str(mask_brick(tmp_path, "b")), *opt]).exit_code == 0
    r = runner.invoke(app, ["bricks", "update", "b", "--artifact", str(mask_brick(tmp_path, "b", seed=2)), *opt])
    assert r.exit_code == 0 and "b@2" in r.output
    r = runner.invoke(app, ["bricks", "versions", "b", *opt])
    assert r.exit_code == 0 and "* b@2" in r.output and "  b@1" in r.output
    r = runner.invoke(app, ["bricks", "rollback", "b", *opt])
    assert r.exit_code == 0 and "active: b@1" in r.output
    r = runner.invoke(app, ["bricks", "verify", *opt])
    assert r.exit_code == 0 and "ok: 2 brick version(s) verified" in r.output

    def error(args):
        res = runner.invoke(app, ["bricks", *args, *opt])
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), res.output
        return lines[0]

    assert "'b' already exists" in error(["add", str(mask_brick(tmp_path, "b", seed=3))])
    assert "no version before 1" in error(["rollback", "b"])
    assert "no brick 'zz'" in error(["remove", "zz"])
    assert "holds brick 'b', not 'c'" in error(["update", "c", "--artifact", str(mask_brick(tmp_path, "b", seed=4))])
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"instruction": "Do it.", "input": "x"}) + "\n")
    assert f"{rows}:1: missing or empty field(s) output" in error(["train", "--data", str(rows), "--id", "new",
                                                                   "--description", "d"])
    rows.write_text(json.dumps({"instruction": "Do it.", "input": "x", "output": "y"}) + "\n")
    msg = error(["train", "--data", str(rows), "--id", "b", "--description", "d"])
    assert "brick id 'b' already exists" in msg and "update" in msg
    assert "no brick 'c' to update" in error(["update", "c", "--data", str(rows)])
    assert "brick id 'Bad Id' is not valid" in error(["train", "--data", str(rows), "--id", "Bad Id",
                                                      "--description", "d"])
    r = runner.invoke(app, ["bricks", "remove", "b", "--version", "1", *opt])
    assert r.exit_code == 0 and "active now b@2" in r.output
