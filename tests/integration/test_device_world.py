"""`device` through the toy world on a CPU-only machine: "auto" and "cpu" give what brickwork gave before devices
existed, and every command with `--device` refuses a CUDA device torch does not see in one line (exit 2)."""

import shutil

import pytest
import torch
from typer.testing import CliRunner

from index import HashingEmbedder
from orchestrator.cli import app

runner = CliRunner()
ROWS = [("Reverse the text.", "abc"), ("Convert the text to uppercase.", "planet"), ("Remove the vowels.", "banana"),
        ("Reverse the text, then convert to uppercase.", "stone"), ("Add the two numbers.", "12 30")]


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    from bricks.toyworld.paths import world_library_dir

    lib = tmp_path_factory.mktemp("device") / "library"
    shutil.copytree(world_library_dir(), lib, ignore=shutil.ignore_patterns("index", ".lock"))
    return lib


def test_load_model_on_cpu_is_the_plain_transformers_load():
    from transformers import AutoModelForCausalLM

    from bricks.generation import generate_texts
    from bricks.model_io import load_model, load_tokenizer
    from bricks.toyworld.paths import world_model_dir

    folder = world_model_dir()
    plain = AutoModelForCausalLM.from_pretrained(str(folder), dtype="auto", use_safetensors=True).eval()
    tok = load_tokenizer(folder)
    prompts = [f"### Instruction:\nReverse the text.\n### Input:\n{w}\n### Response:\n" for w in ("abc", "planet")]
    want = generate_texts(plain, tok, prompts, max_new_tokens=12)
    for device in ("cpu", "auto"):
        model = load_model(folder, device=device)
        assert model.device == torch.device("cpu")
        assert next(model.parameters()).dtype == next(plain.parameters()).dtype
        assert generate_texts(model, tok, prompts, max_new_tokens=12) == want


def test_orchestrator_on_auto_runs_on_the_cpu_with_the_same_outputs(library, no_gpu):
    from bricks.toyworld.paths import world_model_dir
    from orchestrator import Orchestrator

    outputs = {}
    for device in ("auto", "cpu"):
        with Orchestrator.from_pretrained(world_model_dir(), library, embedder=HashingEmbedder(), device=device) as orc:
            assert orc.executor.device == "cpu"
            assert orc.executor.model.device == torch.device("cpu")
            results = orc.run_batch(ROWS)
        assert all(r.error is None for r in results), [r.error for r in results]
        outputs[device] = [r.output for r in results]
    assert outputs["auto"] == outputs["cpu"]
    assert outputs["auto"][0] == "cba"


def test_from_pretrained_refuses_a_missing_gpu_in_one_line(library, no_gpu):
    from bricks.errors import ConfigError
    from bricks.toyworld.paths import world_model_dir
    from orchestrator import Orchestrator

    with pytest.raises(ConfigError, match="^device 'cuda:1' was asked for, but torch sees no CUDA device$"):
        Orchestrator.from_pretrained(world_model_dir(), library, embedder=HashingEmbedder(), device="cuda:1")


@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
def test_run_with_a_missing_gpu_exits_2_with_one_line(no_gpu, device):
    res = runner.invoke(app, ["run", "Reverse the text.", "--input", "abc", "--device", device])
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == f"error: device {device!r} was asked for, but torch sees no CUDA device"


def test_run_with_a_cuda_index_beyond_the_gpus_exits_2(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    res = runner.invoke(app, ["run", "Reverse the text.", "--input", "abc", "--device", "cuda:3"])
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == ("error: device 'cuda:3' was asked for, but torch sees 1 CUDA device(s) "
                                  "(cuda:0..cuda:0)")


def test_an_unknown_device_exits_2_naming_it(no_gpu):
    res = runner.invoke(app, ["run", "Reverse the text.", "--input", "abc", "--device", "tpu"])
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == "error: unknown device 'tpu'; expected auto, cpu, cuda or cuda:N"


@pytest.mark.parametrize("args", [
    ["batch", "in.jsonl", "--out", "out.jsonl"],
    ["eval", "--limit", "1"],
    ["bricks", "train", "--data", "rows.jsonl", "--id", "x"],
    ["bricks", "update", "double", "--data", "rows.jsonl"],
    ["bricks", "discover", "--data", "rows.jsonl"],
    ["analyze", "--data", "rows.jsonl", "--out", "plots"],
], ids=lambda a: " ".join(a[:2]))
def test_every_command_with_device_refuses_a_missing_gpu_first(no_gpu, tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)  # nothing may be written; the files named need not exist
    res = runner.invoke(app, [*args, "--device", "cuda"])
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == "error: device 'cuda' was asked for, but torch sees no CUDA device"
    assert list(tmp_path.iterdir()) == []
