"""A running Orchestrator on a damaged copy of the toy world: bad bricks are excluded with a named reason,
unrelated instructions still run, and a brick that goes bad after start-up fails its step by name, never
with garbage or a traceback."""

import shutil

import pytest

from bricks import BrickManifest, Library, file_entry
from index import HashingEmbedder


def _rewrite_manifest(folder):
    """Make brick.json's checksums match the files again (a tampered artifact that `verify` would pass)."""
    m = BrickManifest.from_file(folder / "brick.json")
    m.model_copy(update={"files": [file_entry(folder, e.path) for e in m.files]}).save(folder / "brick.json")


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def damaged(tmp_path):
    """A copy of the shipped toy library with a flipped adapter (caesar), a truncated one whose manifest matches
    (double@2), and a symlink to a file outside the library (subtract)."""
    from bricks.integrity import clear_cache
    from bricks.toyworld.paths import world_library_dir

    clear_cache()
    lib = tmp_path / "library"
    shutil.copytree(world_library_dir(), lib, ignore=shutil.ignore_patterns("index", ".lock"))
    _flip(lib / "bricks" / "caesar" / "v1" / "adapter_model.safetensors")
    double = lib / "bricks" / "double" / "v2"
    weights = double / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    _rewrite_manifest(double)
    subtract = lib / "bricks" / "subtract" / "v1" / "adapter_model.safetensors"
    shutil.copyfile(subtract, tmp_path / "outside.safetensors")
    subtract.unlink()
    subtract.symlink_to(tmp_path / "outside.safetensors")
    return lib


def test_damaged_bricks_are_excluded_and_a_late_failure_is_named(damaged):
    from bricks.toyworld.paths import world_model_dir
    from orchestrator import Orchestrator

    report = Library.open(damaged).verify()
    assert any("symlink" in p for p in report.problems) and any("caesar@1" in p for p in report.problems)
    with Orchestrator.from_pretrained(world_model_dir(), damaged, embedder=HashingEmbedder()) as orc:
        excluded = orc.planner.excluded
        assert "checksum mismatch for 'adapter_model.safetensors'" in excluded["caesar@1"]
        assert "adapter_model.safetensors" in excluded["double@2"] and "safetensors" in excluded["double@2"]
        assert "subtract" not in orc.planner.library  # a symlinked artifact is never loaded
        ok = orc.run("Reverse the text.", "abc")
        assert ok.error is None and ok.output == "cba"
        devowel = Library.open(damaged).get("devowel")
        _flip(devowel.path / "adapter_model.safetensors")  # goes bad after start-up, before its first use
        late = orc.run("Remove the vowels.", "banana")
        assert [b.key for b in late.steps[0].bricks] == ["devowel@2"]
        assert late.output == "" and "brick devowel@2: checksum mismatch" in late.error and "\n" not in late.error
        again = orc.run("Reverse the text.", "abc")  # unrelated instructions still run
        assert again.error is None and again.output == "cba"
        Library.open(damaged).rollback("devowel")  # a reload checks the newly active version too
        orc.run("Reverse the text.", "abc")
        assert "devowel@1" not in orc.planner.excluded
        _flip(Library.open(damaged).get("devowel", 1).path / "adapter_model.safetensors")
        late = orc.run("Remove the vowels.", "banana")
        assert [b.key for b in late.steps[0].bricks] == ["devowel@1"]
        assert "brick devowel@1: checksum mismatch" in late.error and late.output == ""
