"""Growing and updating a running Orchestrator on a CI-sized toy world (the full-size demo, with its >= 95 %
accuracy bar, is examples/grow_library.py): a brick trained with `brickwork bricks train` is routed to at once,
a new version replaces the old one, and a rollback restores the old outputs exactly."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from bricks import BrickManifest, Library, file_entry
from bricks.rows import read_rows
from bricks.toyworld.dataset import split_path
from index import HashingEmbedder
from orchestrator import Orchestrator


@pytest.fixture
def world(quick_world, tmp_path):
    """(model folder, data folder, a private copy of the quick world's library)."""
    folder, _ = quick_world
    library = tmp_path / "library"
    shutil.copytree(folder / "library", library)  # the fixture's world stays as built
    return folder / "model", folder / "data", library


def _cli():
    from orchestrator.cli import app

    return app


def _rows(data, split, skill):
    return [r for r in read_rows(split_path(data, "single", split)) if r.skills == (skill,)]


def _keys(results):
    return {",".join(b.key for b in res.steps[0].bricks) or "base" for res in results}


def test_bricks_train_grows_a_running_orchestrator(world, tmp_path):
    model, data, library = world
    Library.open(library).remove("subtract")
    train, test = _rows(data, "train", "subtract"), _rows(data, "test", "subtract")[:24]
    rows_file = tmp_path / "subtract.jsonl"
    rows_file.write_text("".join(json.dumps(r.as_dict()) + "\n" for r in train))
    with Orchestrator.from_pretrained(model, library, embedder=HashingEmbedder()) as orc:
        before = orc.run_batch([(r.instruction, r.input) for r in test])
        assert not any("subtract" in k for k in _keys(before))  # no brick for it: base model or another brick
        result = CliRunner().invoke(_cli(), [
            "bricks", "train", "--data", str(rows_file), "--id", "subtract", "--description",
            "Subtracts the second number from the first and returns the difference.", "--model", str(model),
            "--library", str(library), "--steps", "12", "--eval-every", "6", "--batch-size", "16", "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output[result.output.index("{"):])
        assert report["brick"] == "subtract@2"  # version 1 was removed: numbers are never reused
        metrics = report["metrics"]
        assert {"exact_match_holdout", "base_exact_match_holdout", "train_steps", "train_rows"} <= set(metrics)
        manifest = Library.open(library).get("subtract").manifest
        assert manifest.metrics == metrics and set(manifest.examples) == {r.instruction for r in train}
        after = orc.run_batch([(r.instruction, r.input) for r in test])  # the same running orchestrator
    assert _keys(after) == {"subtract@2"}
    assert '"id":"subtract","version":2' in after[0].plan.to_json()
    assert Library.open(library).verify().ok


def _perturbed_copy(brick, out):
    """A new artifact of the same brick: its LoRA B matrices pushed far enough to change the outputs."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(brick.path, out)
    weights = out / "adapter_model.safetensors"
    gen = torch.Generator().manual_seed(0)
    tensors = {k: v + torch.randn(v.shape, generator=gen) if "lora_B" in k else v
               for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights), metadata={"format": "pt"})
    manifest = BrickManifest.from_file(out / "brick.json")
    manifest.model_copy(update={"files": [file_entry(out, e.path) for e in manifest.files]}).save(out / "brick.json")
    return out


def test_update_replaces_routing_and_rollback_restores_outputs_exactly(world, tmp_path):
    model, data, library = world
    tasks = [(r.instruction, r.input) for r in _rows(data, "test", "caesar")[:24]]
    with Orchestrator.from_pretrained(model, library, embedder=HashingEmbedder()) as orc:
        v1 = orc.run_batch(tasks)
        assert _keys(v1) == {"caesar@1"}
        new = orc.update_brick(_perturbed_copy(orc.planner.library.get("caesar"), tmp_path / "caesar-new"))
        assert new.key == "caesar@2"
        v2 = orc.run_batch(tasks)
        assert _keys(v2) == {"caesar@2"} and [r.output for r in v2] != [r.output for r in v1]
        result = CliRunner().invoke(_cli(), ["bricks", "rollback", "caesar", "--library", str(library)])
        assert result.exit_code == 0 and "active: caesar@1" in result.output  # another writer: followed by itself
        back = orc.run_batch(tasks)
    assert _keys(back) == {"caesar@1"} and [r.output for r in back] == [r.output for r in v1]
    assert [b.version for b in Library.open(library).versions("caesar")] == [1, 2]
