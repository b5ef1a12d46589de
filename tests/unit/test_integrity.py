"""No silent wrong answers from a library: adapters that match nothing, damaged or symlinked files, a lost
versions.json, a read-only library, a malformed index, and absolute paths in shipped artifacts."""

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bricks import BaseModelRef, BrickManifest, IncompatibleBrickError, Library, LibraryError, UnsafeArtifactError
from bricks.errors import IntegrityError, ReadOnlyLibraryError
from bricks.integrity import check_brick, check_safetensors, clear_cache
from bricks.manifest import file_entry

BASE = BaseModelRef(name="tiny", fingerprint="sha256:aaa")


@pytest.fixture(scope="module")
def tiny_config():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=1,
                       num_key_value_heads=1, vocab_size=32, head_dim=16)


def lora_brick(root: Path, brick_id: str, *, rename=None, targets=("q_proj", "down_proj"), r: int = 2,
               seed: int = 0) -> Path:
    """A LoRA brick folder in PEFT's format for `tiny_config` (numpy only); `rename(name)` renames tensors."""
    import numpy as np
    from safetensors.numpy import save_file

    folder = root / f"src-{brick_id}-{seed}"
    folder.mkdir(parents=True)
    dims = {"q_proj": (16, 16), "down_proj": (32, 16), "up_proj": (16, 32)}
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(2):
        for module in ("q_proj", "down_proj"):
            fan_in, fan_out = dims[module]
            part = "self_attn" if module == "q_proj" else "mlp"
            name = f"base_model.model.model.layers.{layer}.{part}.{module}"
            tensors[f"{name}.lora_A.weight"] = rng.standard_normal((r, fan_in)).astype(np.float32)
            tensors[f"{name}.lora_B.weight"] = rng.standard_normal((fan_out, r)).astype(np.float32)
    if rename is not None:
        tensors = {rename(k): v for k, v in tensors.items()}
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"r": r, "lora_alpha": 2 * r, "target_modules": list(targets), "peft_type": "LORA",
         "base_model_name_or_path": "tiny", "task_type": "CAUSAL_LM"}))
    _manifest(folder, brick_id, "lora")
    return folder


def mask_brick(root: Path, brick_id: str, seed: int = 0) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    folder = root / f"src-{brick_id}-{seed}"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    save_file({f"layers.{i}": (rng.random(32) < 0.5).astype(np.uint8) for i in range(2)},
              str(folder / "mask.safetensors"))
    _manifest(folder, brick_id, "ffn_mask")
    return folder


def _manifest(folder: Path, brick_id: str, kind: str) -> None:
    """(Re)write the folder's brick.json so that its checksums match the files as they are now."""
    names = ["adapter_config.json", "adapter_model.safetensors"] if kind == "lora" else ["mask.safetensors"]
    BrickManifest(id=brick_id, version=1, kind=kind, description=f"Does {brick_id} to text.",
                  examples=[f"Please {brick_id} the input."], base_model=BASE,
                  files=[file_entry(folder, n) for n in names], created="2026-01-01T00:00:00+00:00",
                  ).save(folder / "brick.json")


def _tree(path: Path) -> dict:
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != ".lock" and ".cache" not in p.parts}


@pytest.fixture
def lib(tmp_path):
    clear_cache()
    return Library.create(tmp_path / "lib", BASE, ["Reverse the text."])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


# -- 4: adapters whose tensors match no module of the model ---------------------------------------------------
def test_adapter_with_renamed_layers_is_refused_listing_names(tmp_path, lib, tiny_config):
    lib.add(lora_brick(tmp_path, "good"))
    before = _tree(lib.path)
    bad = lora_brick(tmp_path, "renamed", rename=lambda k: k.replace(".layers.", ".blocks."))
    for config in (None, tiny_config):
        with pytest.raises(IncompatibleBrickError) as e:
            lib.add(bad, model_config=config)
        msg = str(e.value)
        assert "no tensor matches a module of the model" in msg and "blocks.0" in msg and "\n" not in msg
    with pytest.raises(IncompatibleBrickError, match="no tensor matches"):
        lib.add(bad, force=True)  # nothing to force: it would change nothing it claims to
    with pytest.raises(IncompatibleBrickError, match="no tensor matches"):
        lib.update(lora_brick(tmp_path, "good", rename=lambda k: k.replace(".layers.", ".blocks."), seed=1))
    assert _tree(lib.path) == before


def test_partly_matching_adapter_needs_force(tmp_path, lib, tiny_config):
    def half(name):
        return name.replace("layers.1.mlp", "blocks.1.mlp")

    before = _tree(lib.path)
    partial = lora_brick(tmp_path, "partial", rename=half)
    with pytest.raises(IncompatibleBrickError) as e:
        lib.add(partial)
    assert "only partly" in str(e.value) and "blocks.1.mlp.down_proj.lora_A.weight" in str(e.value)
    extra_target = lora_brick(tmp_path, "extra", targets=("q_proj", "down_proj", "k_proj"))
    with pytest.raises(IncompatibleBrickError, match="target module 'k_proj'"):
        lib.add(extra_target)
    with pytest.raises(IncompatibleBrickError, match="target module 'k_proj' has no tensors"):
        lib.add(extra_target, model_config=tiny_config)
    assert _tree(lib.path) == before
    assert lib.add(partial, force=True).key == "partial@1"
    from bricks.lora import LoraBrick

    added = lib.get("partial")
    with pytest.raises(IncompatibleBrickError, match="matches no LoRA layer"):  # check_fits no longer skips them
        LoraBrick.from_dir(added.path, added.manifest).check_fits(tiny_config)


def test_cli_add_refuses_renamed_adapter_in_one_line(tmp_path, lib):
    from orchestrator.cli import app

    before = _tree(lib.path)
    bad = lora_brick(tmp_path, "renamed", rename=lambda k: k.replace(".layers.", ".blocks."))
    res = CliRunner().invoke(app, ["bricks", "add", str(bad), "--library", str(lib.path)])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "no tensor matches a module of the model" in lines[0]
    partial = lora_brick(tmp_path, "partial", rename=lambda k: k.replace("layers.1.mlp", "blocks.1.mlp"))
    res = CliRunner().invoke(app, ["bricks", "add", str(partial), "--library", str(lib.path)])
    assert res.exit_code == 2 and "only partly" in res.output and "force to add it anyway" in res.output
    assert _tree(lib.path) == before
    res = CliRunner().invoke(app, ["bricks", "add", str(partial), "--library", str(lib.path), "--force"])
    assert res.exit_code == 0 and "added partial@1" in res.output


# -- 5, 6, 7: integrity where bricks are used -----------------------------------------------------------------
def test_flipped_bytes_fail_where_the_brick_is_used(tmp_path, lib, monkeypatch):
    from bricks import integrity

    lib.add(mask_brick(tmp_path, "m"))
    brick = lib.checked("m")
    calls = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda p: calls.append(p) or real(p))
    check_brick(brick)
    assert calls == []  # unchanged files are not hashed again in this process
    _flip(brick.path / "mask.safetensors")
    os.utime(brick.path / "mask.safetensors", ns=(1, 1))  # even with another mtime: the stat key changes
    with pytest.raises(IntegrityError, match=r"brick m@1: checksum mismatch for 'mask.safetensors'"):
        lib.checked("m")
    assert len(calls) == 1


def test_unreadable_safetensors_with_matching_checksum_is_named(tmp_path, lib):
    lib.add(mask_brick(tmp_path, "truncated"))
    lib.add(mask_brick(tmp_path, "pickled", seed=1))
    t = lib.get("truncated").path
    (t / "mask.safetensors").write_bytes((t / "mask.safetensors").read_bytes()[:-7])
    _manifest(t, "truncated", "ffn_mask")  # the checksum rewritten to match: only the header check can tell
    p = lib.get("pickled").path
    (p / "mask.safetensors").write_bytes(b"\x80\x04\x95" + b"\x00" * 60)
    _manifest(p, "pickled", "ffn_mask")
    again = Library.open(lib.path)  # the library still opens
    assert [b.id for b in again.list()] == ["pickled", "truncated"]
    with pytest.raises(IntegrityError,
                       match=r"brick truncated@1: mask.safetensors: tensor 'layers.1' has a bad header entry .* "
                             r"\(data is 57 bytes\)"):
        again.checked("truncated")
    with pytest.raises(IntegrityError, match="brick pickled@1: mask.safetensors is not a readable safetensors"):
        again.checked("pickled")
    with pytest.raises(IntegrityError, match="is not a safetensors file"):
        (tmp_path / "short.safetensors").write_bytes(b"\x01")
        check_safetensors(tmp_path / "short.safetensors", "x")


def test_symlinks_refused_at_add_scan_check_and_verify(tmp_path, lib):
    lib.add(mask_brick(tmp_path, "linked"))
    lib.add(mask_brick(tmp_path, "moved", seed=1))
    lib.add(mask_brick(tmp_path, "ok", seed=2))
    outside = tmp_path / "outside.safetensors"
    stored = lib.get("linked").path / "mask.safetensors"
    shutil.copyfile(stored, outside)
    stored.unlink()
    stored.symlink_to(outside)  # same bytes, same checksum: still refused
    linked = lib.get("linked")
    with pytest.raises(UnsafeArtifactError, match="'mask.safetensors' is a symlink"):
        check_brick(linked)
    version = lib.path / "bricks" / "moved" / "v1"
    shutil.move(str(version), tmp_path / "elsewhere")
    version.symlink_to(tmp_path / "elsewhere")
    again = Library.open(lib.path)
    assert [b.id for b in again.list()] == ["ok"]
    reasons = dict((p.parent.name, r) for p, r in again.skipped)
    assert "symlink" in reasons["linked"] and "symlink" in reasons["moved"]
    report = again.verify()
    assert not report.ok and sum("symlink" in p for p in report.problems) == 2
    src = mask_brick(tmp_path, "srclink", seed=3)
    (src / "extra.txt").symlink_to(outside)
    before = _tree(lib.path)
    with pytest.raises(UnsafeArtifactError, match="'extra.txt' is a symlink"):
        lib.add(src)
    assert _tree(lib.path) == before


def test_bad_bricks_are_excluded_from_routing_and_a_later_failure_is_named(tmp_path, lib, tiny_config):
    from index import HashingEmbedder
    from orchestrator.executors.base import config_masks
    from orchestrator.library_index import open_index
    from orchestrator.lifecycle import exclude_misfits
    from orchestrator.plan import BrickConfig, BrickRef
    from orchestrator.planner import Planner

    for i, name in enumerate(("good", "flipped", "later")):
        lib.add(mask_brick(tmp_path, name, seed=i))
    _flip(lib.get("flipped").path / "mask.safetensors")
    planner = Planner(lib, open_index(lib, HashingEmbedder()))
    exclude_misfits(planner, tiny_config)
    assert set(planner.excluded) == {"flipped@1"}
    assert "checksum mismatch for 'mask.safetensors'" in planner.excluded["flipped@1"]
    assert all(b.id != "flipped" for b in planner.plan("Please flipped the input.").steps[0].config.bricks)
    _flip(lib.get("later").path / "mask.safetensors")  # goes bad after start-up: the step fails, named
    later = BrickConfig(bricks=(BrickRef(id="later", version=1, kind="ffn_mask"),))
    with pytest.raises(IntegrityError, match="brick later@1: checksum mismatch"):
        config_masks(lib, later, tiny_config)


# -- 8: versions.json is not the only record ------------------------------------------------------------------
def test_deleting_versions_json_keeps_rollbacks_and_never_reuses_numbers(tmp_path, lib):
    lib.add(mask_brick(tmp_path, "b", seed=1))
    lib.update(mask_brick(tmp_path, "b", seed=2))
    lib.rollback("b")
    (lib.path / "versions.json").unlink()
    assert Library.open(lib.path).get("b").key == "b@1"  # the rollback holds
    lib.remove("b")
    (lib.path / "versions.json").unlink()
    again = Library.open(lib.path)
    assert again.add(mask_brick(tmp_path, "b", seed=3)).key == "b@3"  # not 1 again: other content, new number
    entries = [json.loads(line) for line in (lib.path / "versions.log").read_text().splitlines()]
    assert [(e["op"], e["id"], e["version"]) for e in entries] == [
        ("add", "b", 1), ("update", "b", 2), ("activate", "b", 1), ("remove", "b", None), ("add", "b", 3)]
    (lib.path / "versions.json").write_text("{corrupt")
    assert Library.open(lib.path).rebuild_versions().bricks["b"].last == 3
    assert json.loads((lib.path / "versions.json").read_text())["bricks"]["b"] == {"active": 3, "last": 3}


def test_old_library_without_log_opens_and_starts_its_log(tmp_path):
    from bricks.toyworld.paths import world_library_dir

    shutil.copytree(world_library_dir(), tmp_path / "toy", ignore=shutil.ignore_patterns("index", "versions.*"))
    assert not (tmp_path / "toy" / "versions.log").exists()
    toy = Library.open(tmp_path / "toy")
    assert toy.get("devowel").key == "devowel@2" and toy.skipped == []
    toy.remove("devowel", version=2)
    log = [json.loads(line) for line in (tmp_path / "toy" / "versions.log").read_text().splitlines()]
    assert {e["id"]: e["last"] for e in log if e["op"] == "start"} == {
        "caesar": 1, "devowel": 2, "double": 2, "subtract": 1, "emergent-add": 1, "emergent-count": 1,
        "emergent-reverse": 1, "emergent-sort": 1, "emergent-uppercase": 1}
    (tmp_path / "toy" / "versions.json").unlink()
    assert Library.open(tmp_path / "toy").update(mask_like_toy(tmp_path, toy)).key == "devowel@3"


def mask_like_toy(tmp_path: Path, toy: Library) -> Path:
    """A copy of devowel@1's folder (the toy world's base), to add as a new version."""
    src = tmp_path / "devowel-copy"
    shutil.copytree(toy.get("devowel", 1).path, src)
    return src


# -- 12: a read-only library --------------------------------------------------------------------------------
def test_read_only_library_refuses_writes_in_one_error_unchanged(tmp_path, lib, monkeypatch):
    import tempfile

    lib.add(mask_brick(tmp_path, "a"))
    before = _tree(lib.path)

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(lib.path / "bricks"))

    with monkeypatch.context() as m:
        m.setattr(tempfile, "mkdtemp", denied)
        with pytest.raises(ReadOnlyLibraryError) as e:
            lib.add(mask_brick(tmp_path, "b"))
    assert isinstance(e.value, LibraryError) and "is read-only" in str(e.value) and str(lib.path) in str(e.value)
    with monkeypatch.context() as m:
        m.setattr(os, "replace", denied)
        with pytest.raises(ReadOnlyLibraryError, match="is read-only"):
            lib.remove("a")
    with monkeypatch.context() as m:
        m.setattr(os, "access", lambda path, mode: False)
        with pytest.raises(ReadOnlyLibraryError, match=f"library '{lib.path}' is read-only"):
            lib.remove("a")
    assert _tree(lib.path) == before and Library.open(lib.path).get("a").key == "a@1"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod a-w; the translation is tested above")
def test_read_only_library_by_chmod(tmp_path, lib):
    lib.add(mask_brick(tmp_path, "a"))
    before = _tree(lib.path)
    for p in [lib.path, *lib.path.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        with pytest.raises(ReadOnlyLibraryError, match="is read-only"):
            lib.add(mask_brick(tmp_path, "b"))
        with pytest.raises(ReadOnlyLibraryError, match="is read-only"):
            lib.remove("a")
    finally:
        for p in [lib.path, *lib.path.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
    assert _tree(lib.path) == before


def test_index_save_to_read_only_library_is_one_error(tmp_path, lib, monkeypatch):
    from index import BrickDocument, BrickIndex, HashingEmbedder, store

    index = BrickIndex.build([BrickDocument("a@1", ("x",))], HashingEmbedder(), source_fingerprint="f")

    def denied(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(store, "open", denied, raising=False)
    with pytest.raises(ReadOnlyLibraryError) as e:
        store.save(index, lib.path / "index")
    assert f"library '{lib.path}' is read-only" in str(e.value) and isinstance(e.value, PermissionError)
    assert not any((lib.path / "index").iterdir())


# -- 13a: a malformed index.json --------------------------------------------------------------------------------
@pytest.mark.parametrize("damage, problem", [
    (lambda m: m.update(entries=[["a@1", "x"]]), "'entries' is list"),
    (lambda m: m["entries"].update({"0": ["a@1", 7]}), "entry 0 is"),
    (lambda m: m.pop("next_id"), "missing key 'next_id'"),
    (lambda m: m.update(nprobe="16"), "'nprobe' is str"),
    (lambda m: m.update(entries={str(int(i) + 100): v for i, v in m["entries"].items()}, next_id=200),
     "vector ids do not match"),
])
def test_malformed_index_metadata_is_named_and_rebuilt(tmp_path, damage, problem):
    from index import BrickDocument, HashingEmbedder, IndexLoadError, load, open_or_build

    docs = [BrickDocument("a@1", ("alpha text", "alpha more")), BrickDocument("b@1", ("beta text",))]
    folder = tmp_path / "index"
    open_or_build(folder, lambda: docs, HashingEmbedder(), "fp")
    meta = json.loads((folder / "index.json").read_text())
    damage(meta)
    (folder / "index.json").write_text(json.dumps(meta))
    with pytest.raises(IndexLoadError) as e:
        load(folder, HashingEmbedder(), expected_fingerprint="fp")
    assert str(folder / "index") in str(e.value) and problem in str(e.value) and "\n" not in str(e.value)
    index, rebuilt = open_or_build(folder, lambda: docs, HashingEmbedder(), "fp")
    assert rebuilt and index.search("beta text")[0].key == "b@1"
    assert load(folder, HashingEmbedder(), expected_fingerprint="fp").documents() == index.documents()


# -- shipped artifacts hold no absolute path ------------------------------------------------------------------
def _absolute_paths(value, where=""):
    if isinstance(value, str):
        return [f"{where}: {value}"] if value.startswith("/") else []
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _absolute_paths(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _absolute_paths(v, f"{where}[{i}]")]
    return []


def test_shipped_toy_world_json_holds_no_absolute_path():
    from bricks.toyworld.paths import world_library_dir

    world = world_library_dir().parent
    files = sorted(world.rglob("*.json"))
    assert len(files) > 10
    found = [p for f in files for p in _absolute_paths(json.loads(f.read_text()), str(f.relative_to(world)))]
    assert found == []
    assert Library.open(world_library_dir()).verify().ok  # the manifests' checksums follow the rewritten files


def test_exported_adapter_config_holds_no_absolute_path(tmp_path, tiny_config):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    from bricks.training.export import write_lora_brick

    model_dir = tmp_path / "abs" / "model"
    LlamaForCausalLM(tiny_config).save_pretrained(model_dir)
    model = get_peft_model(LlamaForCausalLM.from_pretrained(model_dir), LoraConfig(r=2, target_modules=["q_proj"]))
    folder = write_lora_brick(model, tmp_path / "brick", brick_id="x", description="d", examples=["e"],
                              base_model=BASE, metrics={})
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny"
    assert Library.create(tmp_path / "lib", BASE).add(folder).key == "x@1"  # checksums match the rewrite
