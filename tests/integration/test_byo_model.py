"""Bring your own model and adapters, end to end: the README's Python and commands, run exactly as written there
(taken from README.md by their markers, so the two cannot drift), and every bad input refused in one line."""

import hashlib
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _readme_block(marker: str, lang: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(rf"<!-- {re.escape(marker)} -->\n```{lang}\n(.*?)\n```", text, re.S)
    assert m, f"README.md has no ```{lang} block after <!-- {marker} -->"
    return m.group(1)


def _readme_commands() -> list[list[str]]:
    lines = _readme_block("byo:commands", "bash").replace("\\\n", " ").splitlines()
    commands = [shlex.split(line) for line in lines if line.strip()]
    assert commands and all(c[0] == "brickwork" for c in commands), commands
    return [c[1:] for c in commands]


def _one_line_error(res) -> str:
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def byo(tmp_path_factory):
    """A folder where the README's Python ran: my-model/ and my-adapter/."""
    folder = tmp_path_factory.mktemp("byo")
    code = _readme_block("byo:python", "python")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        exec(compile(code, "README.md:byo:python", "exec"), {"__name__": "readme_byo"})
    return folder


def _other_adapter(byo: Path, name: str, *, hidden: int = 64, targets=("q_proj", "v_proj"), safe: bool = True) -> Path:
    """A PEFT adapter saved beside the README's: for a Qwen2 of another `hidden` size, or the README's model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(byo / "my-model")
    torch.manual_seed(1)
    if hidden == 64:
        model = Qwen2ForCausalLM.from_pretrained(byo / "my-model")
    else:
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    out = byo / name
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets))).save_pretrained(
        str(out), safe_serialization=safe)
    return out


def test_the_readme_walkthrough_routes_to_the_imported_brick_and_runs(byo, monkeypatch):
    monkeypatch.chdir(byo)
    adapter_before = _digest(byo / "my-adapter")
    results = [runner.invoke(app, args) for args in _readme_commands()]
    for args, res in zip(_readme_commands(), results):
        assert res.exit_code == 0, (args, res.output)
    init, imported, plan, run = results
    assert "created library" in init.stdout and "my-model sha256:" in init.stdout
    assert "imported excited@1" in imported.stdout
    plan_lines = plan.stdout.strip().splitlines()
    assert len(plan_lines) == 2 and "[base]" in plan_lines[0] and "[excited@1]" in plan_lines[1], plan.stdout
    assert "excited@1" in run.stdout and "output:" in run.stdout
    assert _digest(byo / "my-adapter") == adapter_before  # the adapter folder is never modified
    manifest = json.loads((byo / "my-library/bricks/excited/v1/brick.json").read_text())
    library = json.loads((byo / "my-library/library.json").read_text())
    assert manifest["base_model"] == library["base_model"] and library["base_model"]["name"] == "my-model"
    assert {f["path"] for f in manifest["files"]} == {"adapter_config.json", "adapter_model.safetensors"}
    assert manifest["examples"] == ["Make it sound excited."]
    assert (byo / "my-library/index/index.json").is_file()  # import-peft updated the saved index


@pytest.fixture
def library(byo, tmp_path):
    """A fresh library for the README's model (the walkthrough's own is left alone)."""
    res = runner.invoke(app, ["library", "init", str(tmp_path / "lib"), "--model", str(byo / "my-model"),
                              "--base-example", "Summarize the text."])
    assert res.exit_code == 0, res.output
    return tmp_path / "lib"


def _import(adapter: Path, library: Path, model: Path, brick_id: str = "x", *extra: str):
    return runner.invoke(app, ["bricks", "import-peft", str(adapter), "--id", brick_id, "--description",
                               "Does a thing.", "--library", str(library), "--model", str(model), *extra])


def test_an_adapter_for_another_model_is_refused_by_its_shapes(byo, library):
    adapter = _other_adapter(byo, "adapter-hidden32", hidden=32)
    err = _one_line_error(_import(adapter, library, byo / "my-model"))
    assert "does not fit the base model" in err and "shape [4, 32], expected [4, 64]" in err
    assert not (library / "bricks" / "x").exists()


def test_an_adapter_with_a_target_module_the_model_lacks_is_refused(byo, library, tmp_path):
    adapter = tmp_path / "adapter-c_attn"
    shutil.copytree(byo / "my-adapter", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj", "v_proj", "c_attn"]
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    err = _one_line_error(_import(adapter, library, byo / "my-model"))
    assert "target module 'c_attn' matches no module of the model" in err
    assert not (library / "bricks" / "x").exists()


def test_pickle_adapter_weights_are_refused(byo, library):
    adapter = _other_adapter(byo, "adapter-pickle", safe=False)
    assert (adapter / "adapter_model.bin").is_file() and not (adapter / "adapter_model.safetensors").exists()
    err = _one_line_error(_import(adapter, library, byo / "my-model"))
    assert "['adapter_model.bin']" in err and "safetensors only" in err


def test_a_run_on_another_model_is_refused_naming_both_fingerprints(byo, library, tmp_path):
    from bricks.fingerprint import model_fingerprint
    from bricks.toyworld.paths import world_model_dir

    ours, theirs = model_fingerprint(byo / "my-model"), model_fingerprint(world_model_dir())
    res = runner.invoke(app, ["run", "Summarize the text.", "--input", "abc", "--model", str(world_model_dir()),
                              "--library", str(library)])
    err = _one_line_error(res)
    assert ours in err and theirs in err
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"id": "1", "instruction": "Summarize the text.", "input": "abc"}) + "\n")
    out = tmp_path / "out.jsonl"
    res = runner.invoke(app, ["batch", str(rows), "-o", str(out), "--model", str(world_model_dir()),
                              "--library", str(library), "--quiet"])
    err = _one_line_error(res)
    assert ours in err and theirs in err
    assert not out.exists() and not Path(f"{out}.job.json").exists()  # the output is not claimed by the wrong model


def test_from_pretrained_refuses_another_model_before_loading_any_brick(byo, library, monkeypatch):
    from bricks.errors import IncompatibleBrickError
    from bricks.toyworld.paths import world_model_dir
    from orchestrator import Orchestrator

    def no_executor(*args, **kwargs):
        raise AssertionError("an executor was started for the wrong model")

    monkeypatch.setattr("orchestrator.executors.transformers.TransformersExecutor", no_executor)
    with pytest.raises(IncompatibleBrickError, match="but library .* was built on my-model sha256:"):
        Orchestrator.from_pretrained(world_model_dir(), library)


def test_init_refuses_an_existing_library_and_a_folder_that_is_no_model(byo, library, tmp_path):
    before = (library / "library.json").read_bytes()
    err = _one_line_error(runner.invoke(app, ["library", "init", str(library), "--model", str(byo / "my-model")]))
    assert "a library already exists" in err and (library / "library.json").read_bytes() == before
    err = _one_line_error(runner.invoke(app, ["library", "init", str(tmp_path / "new"), "--model", str(tmp_path)]))
    assert "has no config.json" in err and not (tmp_path / "new").exists()


def test_update_takes_a_plain_peft_folder_and_keeps_the_description(byo, library):
    assert _import(byo / "my-adapter", library, byo / "my-model", "excited", "--example", "Make it sound excited.",
                   "--example", "Add some excitement.").exit_code == 0
    newer = _other_adapter(byo, "adapter-v2", targets=("q_proj", "k_proj", "v_proj"))
    res = runner.invoke(app, ["bricks", "update", "excited", "--artifact", str(newer), "--library", str(library),
                              "--model", str(byo / "my-model")])
    assert res.exit_code == 0, res.output
    assert "updated excited@2" in res.stdout
    from bricks.library import Library

    lib = Library.open(library)
    v1, v2 = (b.manifest for b in lib.versions("excited"))
    assert v2.description == v1.description == "Does a thing."
    assert v2.examples == v1.examples == ["Make it sound excited.", "Add some excitement."]
    assert lib.active_version("excited") == 2 and lib.verify().ok
    err = _one_line_error(runner.invoke(app, ["bricks", "update", "excited", "--artifact",
                                              str(_other_adapter(byo, "adapter-v3-hidden32", hidden=32)),
                                              "--library", str(library), "--model", str(byo / "my-model")]))
    assert "does not fit the base model" in err and Library.open(library).active_version("excited") == 2


def test_import_needs_the_model_for_a_library_and_reads_an_examples_file(byo, library, tmp_path):
    err = _one_line_error(runner.invoke(app, ["bricks", "import-peft", str(byo / "my-adapter"), "--id", "excited",
                                              "--description", "Does a thing.", "--library", str(library)]))
    assert "give --model" in err and str(library) in err and not (library / "bricks" / "excited").exists()
    examples = tmp_path / "examples.txt"
    examples.write_text("Make it sound excited.\nAdd some excitement.\n")
    res = _import(byo / "my-adapter", library, byo / "my-model", "excited", "--example", "Hype it up.",
                  "--examples", str(examples), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["examples"] == ["Hype it up.", "Make it sound excited.", "Add some excitement."]
    err = _one_line_error(_import(byo / "my-adapter", library, byo / "my-model", "excited"))
    assert "brick id 'excited' already exists" in err
