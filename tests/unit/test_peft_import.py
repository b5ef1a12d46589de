"""`bricks.peft_import` (a plain PEFT LoRA folder made into a brick) and `bricks.fingerprint` (cheap model
fingerprints, and the check that a model is a library's base model)."""

import hashlib
import json
import struct
import time
from pathlib import Path

import pytest

from bricks.errors import IncompatibleBrickError, LibraryError, ManifestError, UnsafeArtifactError
from bricks.fingerprint import check_base_model, model_fingerprint
from bricks.library import Library
from bricks.manifest import BaseModelRef, sha256_file
from bricks.peft_import import brick_from_peft, import_peft, read_examples, update_from_peft


@pytest.fixture(scope="module")
def model_dir(tiny, tmp_path_factory):
    """The `tiny` random Llama saved as a model folder (config, safetensors, tokenizer)."""
    model, tok = tiny
    folder = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def _adapter(model, folder: Path, targets=("q_proj", "v_proj"), *, safe: bool = True) -> Path:
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=list(targets),
                                                  init_lora_weights=False))
    peft_model.save_pretrained(str(folder), safe_serialization=safe)
    peft_model.unload()  # the shared `tiny` model is left without LoRA layers
    return folder


@pytest.fixture
def adapter(tiny, tmp_path):
    return _adapter(tiny[0], tmp_path / "adapter")


@pytest.fixture
def library(model_dir, tmp_path):
    ref = BaseModelRef(name="tiny", fingerprint=model_fingerprint(model_dir))
    return Library.create(tmp_path / "lib", ref, ["Reverse the text."])


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {p.name: (sha256_file(p), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_brick_from_peft_writes_checksums_and_base_model_and_leaves_the_adapter_alone(adapter, tmp_path):
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/home/someone/models/tiny"  # a path of the machine it was trained on
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    before = _snapshot(adapter)
    ref = BaseModelRef(name="tiny", fingerprint="sha256:abc")
    brick = brick_from_peft(adapter, tmp_path / "brick", brick_id="shout", description="Shouts.",
                            examples=["Shout it.", " Shout it. ", "", "Say it loudly."], base_model=ref)
    assert _snapshot(adapter) == before
    m = brick.manifest
    assert (m.id, m.version, m.kind, m.base_model, m.examples) == ("shout", 1, "lora", ref,
                                                                    ["Shout it.", "Say it loudly."])
    assert {f.path: f.sha256 for f in m.files} == {
        name: sha256_file(brick.path / name) for name in ("adapter_config.json", "adapter_model.safetensors")}
    weights = "adapter_model.safetensors"
    assert (brick.path / weights).read_bytes() == (adapter / weights).read_bytes()
    assert json.loads((brick.path / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny"
    assert sorted(p.name for p in brick.path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                            "brick.json"]  # PEFT's README.md is not copied


@pytest.mark.parametrize("brick_id,description,named", [("Bad Id", "Shouts.", "id 'Bad Id' must match"),
                                                        ("shout", "  ", "description")])
def test_a_bad_manifest_is_refused_before_anything_is_written(adapter, tmp_path, brick_id, description, named):
    with pytest.raises(ManifestError, match=named) as e:
        brick_from_peft(adapter, tmp_path / "brick", brick_id=brick_id, description=description, examples=[],
                        base_model=BaseModelRef(name="t", fingerprint="sha256:abc"))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "brick").exists() and [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_pickle_weights_are_refused_and_never_read(tiny, tmp_path):
    folder = _adapter(tiny[0], tmp_path / "pickled", safe=False)
    (folder / "adapter_model.bin").write_bytes(b"not even a pickle: it must never be opened")
    with pytest.raises(UnsafeArtifactError, match=r"pickle weights \['adapter_model.bin'\]; .*safetensors only"):
        brick_from_peft(folder, tmp_path / "brick", brick_id="p", description="P.", examples=[],
                        base_model=BaseModelRef(name="t", fingerprint="sha256:abc"))
    assert not (tmp_path / "brick").exists()


def test_a_folder_that_is_not_a_lora_adapter_is_refused(adapter, tmp_path):
    ref = BaseModelRef(name="t", fingerprint="sha256:abc")
    with pytest.raises(ManifestError, match="does not exist"):
        brick_from_peft(tmp_path / "nope", tmp_path / "b", brick_id="a", description="A.", examples=[], base_model=ref)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(dict(config, peft_type="IA3")))
    with pytest.raises(IncompatibleBrickError, match="holds a IA3 adapter; brickwork imports LoRA adapters only"):
        brick_from_peft(adapter, tmp_path / "b", brick_id="a", description="A.", examples=[], base_model=ref)
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(ManifestError, match="has no adapter_model.safetensors"):
        brick_from_peft(adapter, tmp_path / "b", brick_id="a", description="A.", examples=[], base_model=ref)


def test_import_checks_the_adapter_against_the_model_and_adds_it(library, adapter, model_dir):
    brick = import_peft(library, adapter, brick_id="shout", description="Shouts.", examples=["Shout it."],
                        model=model_dir)
    assert brick.key == "shout@1" and library.get("shout").manifest.base_model == library.base_model
    assert library.verify().ok
    with pytest.raises(LibraryError, match="brick id 'shout' already exists"):
        import_peft(library, adapter, brick_id="shout", description="Shouts.", model=model_dir)


def test_import_refuses_an_adapter_that_does_not_fit(library, tmp_path, model_dir):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    wider = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(IncompatibleBrickError, match=r"shape \[2, 48\], expected \[2, 32\]"):
        import_peft(library, _adapter(wider, tmp_path / "wide"), brick_id="wide", description="W.", model=model_dir)
    assert "wide" not in Library.open(library.path) and not library.leftovers()


def test_import_refuses_a_model_that_is_not_the_librarys(library, adapter, tmp_path, model_dir):
    other = tmp_path / "other-model"
    other.mkdir()
    for p in model_dir.iterdir():
        (other / p.name).write_bytes(p.read_bytes())
    data = bytearray((other / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one weight byte changed: another model
    (other / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(IncompatibleBrickError) as e:
        import_peft(library, adapter, brick_id="shout", description="Shouts.", model=other)
    assert model_fingerprint(other) in str(e.value) and library.base_model.fingerprint in str(e.value)
    assert "shout" not in library


def test_update_from_peft_keeps_the_active_versions_description_and_examples(library, adapter, tiny, tmp_path,
                                                                              model_dir):
    import_peft(library, adapter, brick_id="shout", description="Shouts.", examples=["Shout it."], model=model_dir)
    newer = _adapter(tiny[0], tmp_path / "newer", targets=("q_proj",))
    brick = update_from_peft(library, newer, "shout", model=model_dir)
    assert brick.key == "shout@2" and library.active_version("shout") == 2
    assert (brick.manifest.description, brick.manifest.examples) == ("Shouts.", ["Shout it."])
    again = update_from_peft(library, newer, "shout", description="Shouts louder.", examples=["Yell."])
    assert (again.manifest.description, again.manifest.examples) == ("Shouts louder.", ["Yell."])
    with pytest.raises(LibraryError, match="no brick 'whisper' to update"):
        update_from_peft(library, newer, "whisper")


def test_read_examples_from_lines_and_jsonl(tmp_path):
    (tmp_path / "ex.txt").write_text("Shout it.\n\n  Say it loudly.  \nShout it.\n")
    assert read_examples(tmp_path / "ex.txt") == ["Shout it.", "Say it loudly."]
    (tmp_path / "ex.jsonl").write_text('{"instruction": "Shout it.", "input": "a"}\n"Yell."\n')
    assert read_examples(tmp_path / "ex.jsonl") == ["Shout it.", "Yell."]
    (tmp_path / "bad.jsonl").write_text('{"instruction": "ok"}\n{"input": "no instruction"}\n')
    with pytest.raises(ManifestError, match="bad.jsonl:2: expected a string or an object"):
        read_examples(tmp_path / "bad.jsonl")


def test_the_shipped_toy_world_fingerprint_is_its_models():
    from bricks.toyworld.paths import world_library_dir, world_model_dir

    lib = Library.open(world_library_dir())
    assert check_base_model(world_model_dir(), lib.base_model) == lib.base_model.fingerprint


def test_fingerprinting_a_multi_gb_model_reads_only_headers_and_edges(tmp_path):
    """A sparse 4 GiB safetensors file: its fingerprint takes well under a second (it reads at most 2 MiB)."""
    size = 4 << 30
    header = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    path = tmp_path / "model.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + size)
    t = time.perf_counter()
    first = model_fingerprint(tmp_path)
    assert time.perf_counter() - t < 2.0
    with open(path, "r+b") as f:  # the last byte of data changes: so does the fingerprint
        f.seek(-1, 2)
        f.write(b"\x01")
    assert model_fingerprint(tmp_path) != first
    assert first == "sha256:" + hashlib.sha256(
        b"model.safetensors" + struct.pack("<Q", 8 + len(header) + size) + header + bytes(2 << 20)).hexdigest()
