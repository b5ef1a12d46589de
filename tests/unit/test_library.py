"""Brick manifests and the library on disk: validation, safety, atomic adds, fingerprints."""

import json
import shutil

import pytest

from bricks import (
    BaseModelRef,
    BrickManifest,
    IncompatibleBrickError,
    Library,
    LibraryError,
    ManifestError,
    UnsafeArtifactError,
)
from bricks.errors import IntegrityError
from bricks.ffn_mask import FfnMaskBrick
from bricks.fingerprint import model_fingerprint
from bricks.lora import LoraBrick
from bricks.manifest import file_entry

BASE = BaseModelRef(name="tiny", fingerprint="sha256:aaa")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
                      num_key_value_heads=1, vocab_size=32, head_dim=64)
    folder = tmp_path_factory.mktemp("tiny-model")
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder, cfg


def _lora_folder(tmp_path, tiny_model, brick_id="b1", base=BASE, r=4, targets=("q_proj", "down_proj")):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    folder = tmp_path / f"src-{brick_id}-{r}"
    model = get_peft_model(LlamaForCausalLM(tiny_model[1]), LoraConfig(r=r, target_modules=list(targets)))
    model.save_pretrained(folder)
    manifest = BrickManifest(id=brick_id, version=1, kind="lora", description="does b", examples=["Do b."],
                             base_model=base, created="2026-01-01T00:00:00+00:00",
                             files=[file_entry(folder, "adapter_config.json"),
                                    file_entry(folder, "adapter_model.safetensors")])
    manifest.save(folder / "brick.json")
    return folder


def _tree(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_manifest_round_trip_and_unknown_keys_kept(tmp_path, caplog):
    m = BrickManifest(id="x", version=2, kind="ffn_mask", description="d", examples=[], base_model=BASE, files=[],
                      created="2026-01-01T00:00:00+00:00", owner="me")
    m.save(tmp_path / "brick.json")
    again = BrickManifest.from_file(tmp_path / "brick.json")
    assert again == m and again.model_extra == {"owner": "me"}
    assert "unknown manifest keys kept: owner" in caplog.text


def test_manifest_lists_all_missing_fields_in_one_error(tmp_path):
    (tmp_path / "brick.json").write_text(json.dumps({"id": "x", "kind": "lora"}))
    with pytest.raises(ManifestError) as e:
        BrickManifest.from_file(tmp_path / "brick.json")
    msg = str(e.value)
    assert "\n" not in msg and "brick.json" in msg
    for field in ("version", "description", "examples", "base_model", "files", "created"):
        assert field in msg


def test_manifest_path_escape_and_pickles_refused(tmp_path, tiny_model):
    data = json.loads(BrickManifest(id="x", version=1, kind="lora", description="d", examples=[], base_model=BASE,
                                    files=[], created="t").model_dump_json())
    data["files"] = [{"path": "../../etc/passwd", "sha256": "0", "size": 1}]
    with pytest.raises(UnsafeArtifactError, match="escapes its brick folder"):
        BrickManifest.from_dict(data)
    folder = _lora_folder(tmp_path, tiny_model)
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(UnsafeArtifactError, match="pickle"):
        LoraBrick.from_dir(folder, BrickManifest.from_file(folder / "brick.json"))


def test_lora_shapes_and_targets_checked(tmp_path, tiny_model):
    from transformers import LlamaConfig

    folder = _lora_folder(tmp_path, tiny_model)
    brick = LoraBrick.from_dir(folder, BrickManifest.from_file(folder / "brick.json"))
    brick.check_fits(tiny_model[1])
    other = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=2, vocab_size=32, head_dim=64)
    with pytest.raises(IncompatibleBrickError) as e:
        brick.check_fits(other)
    assert "expected" in str(e.value) and "layer 1 but the model has 1" in str(e.value)


def test_library_add_get_remove_and_fingerprint(tmp_path, tiny_model):
    lib = Library.create(tmp_path / "lib", BASE, ["Reverse the text."])
    f0 = lib.fingerprint()
    brick = lib.add(_lora_folder(tmp_path, tiny_model, "b1"))
    assert brick.key == "b1@1" and [b.id for b in lib.list()] == ["b1"]
    assert lib.fingerprint() != f0
    assert Library.open(tmp_path / "lib").get("b1").manifest == brick.manifest
    with pytest.raises(LibraryError, match="already exists"):
        lib.add(_lora_folder(tmp_path, tiny_model, "b1", r=8))
    lib.remove("b1")
    assert lib.list() == [] and lib.fingerprint() == f0
    with pytest.raises(KeyError, match="no brick 'b1'"):
        lib.get("b1")


def test_foreign_base_refused_with_both_fingerprints(tmp_path, tiny_model):
    lib = Library.create(tmp_path / "lib", BASE)
    before = _tree(tmp_path / "lib")
    other = BaseModelRef(name="other", fingerprint="sha256:bbb")
    with pytest.raises(IncompatibleBrickError) as e:
        lib.add(_lora_folder(tmp_path, tiny_model, "b2", base=other))
    assert "sha256:bbb" in str(e.value) and "sha256:aaa" in str(e.value)
    assert _tree(tmp_path / "lib") == before


def test_failed_add_changes_nothing(tmp_path, tiny_model):
    lib = Library.create(tmp_path / "lib", BASE)
    lib.add(_lora_folder(tmp_path, tiny_model, "ok"))
    before = _tree(tmp_path / "lib")
    bad = _lora_folder(tmp_path, tiny_model, "bad")
    (bad / "adapter_model.safetensors").write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        lib.add(bad)
    assert _tree(tmp_path / "lib") == before


def test_corrupt_brick_skipped_on_open(tmp_path, tiny_model, caplog):
    lib = Library.create(tmp_path / "lib", BASE)
    lib.add(_lora_folder(tmp_path, tiny_model, "good"))
    lib.add(_lora_folder(tmp_path, tiny_model, "broken"))
    (tmp_path / "lib" / "bricks" / "broken" / "v1" / "brick.json").write_text("{not json")
    again = Library.open(tmp_path / "lib")
    assert [b.id for b in again.list()] == ["good"]
    assert len(again.skipped) == 1 and "not valid JSON" in again.skipped[0][1]


def test_corrupt_library_file(tmp_path):
    (tmp_path / "library.json").write_text("[]")
    with pytest.raises(LibraryError, match="corrupt library file"):
        Library.open(tmp_path)
    with pytest.raises(LibraryError, match="not a brick library"):
        Library.open(tmp_path / "nothing")


def test_model_fingerprint_tracks_weights(tmp_path, tiny_model):
    folder = tiny_model[0]
    fp = model_fingerprint(folder)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert model_fingerprint(copy) == fp
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert model_fingerprint(copy) != fp
    (copy / "model.safetensors").unlink()
    (copy / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(UnsafeArtifactError, match="pickle"):
        model_fingerprint(copy)


def test_ffn_mask_brick_round_trip(tmp_path, tiny_model):
    import torch

    folder = tmp_path / "mask"
    folder.mkdir()
    masks = {0: torch.arange(128) < 32, 1: torch.arange(128) >= 96}
    FfnMaskBrick.write_masks(folder, masks)
    manifest = BrickManifest(id="m", version=1, kind="ffn_mask", description="d", examples=[], base_model=BASE,
                             files=[file_entry(folder, "mask.safetensors")], created="t")
    brick = FfnMaskBrick.from_dir(folder, manifest)
    assert brick.density() == pytest.approx(0.25)
    assert torch.equal(brick.masks()[1], masks[1])
    brick.check_fits(tiny_model[1])


def test_pickle_adapter_in_library_is_skipped_on_open(tmp_path, tiny_model):
    lib = Library.create(tmp_path / "lib", BASE)
    lib.add(_lora_folder(tmp_path, tiny_model, "good"))
    lib.add(_lora_folder(tmp_path, tiny_model, "sneaky"))
    (tmp_path / "lib" / "bricks" / "sneaky" / "v1" / "adapter_model.bin").write_bytes(b"\x80\x04")
    again = Library.open(tmp_path / "lib")
    assert [b.id for b in again.list()] == ["good"]
    assert "pickle" in again.skipped[0][1]


def test_aliases_change_routing_documents_only_and_are_logged(tmp_path, tiny_model):
    from orchestrator.library_index import index_fingerprint, library_documents

    lib = Library.create(tmp_path / "lib", BASE, ["Reverse the text.", "Sort the letters."])
    lib.add(_lora_folder(tmp_path, tiny_model, "b1"))
    weights = (lib.get("b1").path / "adapter_model.safetensors").read_bytes()
    generation, f0, i0 = lib.generation, lib.fingerprint(), index_fingerprint(lib)
    brick = lib.set_aliases("b1", [" Make it b. ", "Do b.", "", "Make it b.", "B it, please."])
    assert brick.manifest.aliases == ["Make it b.", "Do b.", "B it, please."]  # stripped, blanks and repeats out
    assert (brick.path / "adapter_model.safetensors").read_bytes() == weights
    assert lib.generation == generation + 1 and lib.fingerprint() != f0
    lib.set_base_aliases({"Reverse the text.": ["Mirror the word."]})
    assert index_fingerprint(lib) != i0
    reopened = Library.open(tmp_path / "lib")
    assert reopened.get("b1").manifest.aliases == brick.manifest.aliases
    assert reopened.base_aliases == {"Reverse the text.": ["Mirror the word."]}
    docs = {d.key: d.texts for d in library_documents(reopened)}
    assert docs["b1@1"] == ("does b", "Do b.", "Make it b.", "B it, please.")
    assert docs["base"] == ("Reverse the text.", "Sort the letters.", "Mirror the word.")
    bare = {d.key: d.texts for d in library_documents(reopened, aliases=False)}
    assert bare["b1@1"] == ("does b", "Do b.") and bare["base"] == ("Reverse the text.", "Sort the letters.")
    ops = [json.loads(line)["op"] for line in (tmp_path / "lib" / "versions.log").read_text().splitlines()]
    assert ops[-1] == "aliases"


def test_bad_aliases_are_refused_and_change_nothing(tmp_path, tiny_model):
    lib = Library.create(tmp_path / "lib", BASE, ["Reverse the text."])
    lib.add(_lora_folder(tmp_path, tiny_model, "b1"))
    before = _tree(tmp_path / "lib")
    with pytest.raises(LibraryError, match="'Count the letters.' is not one of the library's base_examples"):
        lib.set_base_aliases({"Count the letters.": ["Tally."]})
    with pytest.raises(ValueError, match="aliases of 'b1': .* is not a phrasing"):
        lib.set_aliases("b1", ["fine", 3])
    with pytest.raises(KeyError, match="no brick 'zz'"):
        lib.set_aliases("zz", ["x"])
    assert _tree(tmp_path / "lib") == before
    library_json = tmp_path / "lib" / "library.json"
    data = json.loads(library_json.read_text())
    library_json.write_text(json.dumps({**data, "base_aliases": {"Nope.": ["x"]}}))
    with pytest.raises(LibraryError, match="'Nope.', which is not one of base_examples"):
        Library.open(tmp_path / "lib")
