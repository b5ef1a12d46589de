"""The README's "your own model and adapters" path on every family of the zoo: a tiny model folder and a PEFT
adapter on the family's default LoRA targets, then `library init`, `bricks import-peft`, `plan`, `run` (routed to
the imported brick) and `bricks discover` (emergent bricks), each as the CLI runs it. A mixture of experts
refuses FFN-neuron discovery in one line naming its layout."""

import json

import pytest
from typer.testing import CliRunner
from zoo_models import ZOO, save_zoo_model

from orchestrator.cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()
WORDS = ["planet", "garden", "silver", "window", "basket", "orange", "purple", "yellow", "candle", "forest"]


@pytest.fixture(scope="module")
def tokenizer():
    from bricks.model_io import load_tokenizer
    from bricks.toyworld.paths import world_model_dir

    return load_tokenizer(world_model_dir())


def _adapter(model_dir, folder):
    """A PEFT adapter (random, non-zero) on the family's default LoRA targets, saved as a user would."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from bricks.training.targets import lora_target_modules

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    targets = list(lora_target_modules(model))
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
                   ).save_pretrained(folder)
    return targets


def _ok(args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, (args, res.output)
    return res


@pytest.mark.parametrize("family", list(ZOO))
def test_your_own_model_path_on_each_family(family, tokenizer, tmp_path):
    longer = {"n_positions": 256} if family == "gpt2" else {}  # the zoo's 64 positions cannot hold the prompt
    model = save_zoo_model(family, tmp_path / "my-model", tokenizer, **longer)
    targets = _adapter(model, tmp_path / "my-adapter")
    library = tmp_path / "my-library"
    _ok(["library", "init", library, "--model", model, "--base-example", "Summarize the text."])
    imported = _ok(["bricks", "import-peft", tmp_path / "my-adapter", "--id", "excited", "--library", library,
                    "--model", model, "--description", "Rewrites the input in an excited tone.",
                    "--example", "Make it sound excited."])
    assert "imported excited@1" in imported.stdout
    plan = _ok(["plan", "Summarize the text, then make it sound excited.", "--library", library])
    assert "[excited@1]" in plan.stdout.strip().splitlines()[-1], plan.stdout
    run = json.loads(_ok(["run", "Make it sound excited.", "--input", "hello there", "--model", model, "--library",
                          library, "--json"]).stdout)
    assert run["error"] is None and [b["id"] for b in run["steps"][0]["bricks"]] == ["excited"], (targets, run)

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"instruction": instruction, "input": w, "output": w[::-1],
                                        "skills": [skill]}) + "\n"
                            for skill, instruction in (("reverse", "Reverse the text."), ("upper", "Uppercase it."))
                            for w in WORDS))
    args = ["bricks", "discover", "--data", rows, "--model", model, "--library", library, "--criterion", "active",
            "--min-retention", "0", "--min-support", "0"]
    if family == "mixtral":
        res = runner.invoke(app, [str(a) for a in args])
        err = res.stderr.strip().splitlines()[-1]  # the lines before it are the weights' loading bar
        assert res.exit_code == 2 and err.startswith("error: mixtral: layers.0.mlp (MixtralSparseMoeBlock"), res.output
        assert "mixture of experts" in err and "expert_mask bricks do" in err
        return
    _ok(args)
    listed = _ok(["bricks", "list", "--library", library]).stdout
    assert "emergent-reverse@1" in listed and "emergent-upper@1" in listed and "excited@1" in listed
