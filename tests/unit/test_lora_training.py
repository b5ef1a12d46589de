"""LoRA training on Hugging Face Trainer (#21): the same adapter as the hand-written loop it replaced (same batches,
AdamW, clipping and warm-up + cosine schedule), gradient accumulation, early stop on the held-out part, the progress
callback, no files unless a checkpoint dir is given, and the TrainingArguments a GPU would get (bf16), checked on
the CPU as a pure function."""

import json
import math
import random

import pytest
import torch
from typer.testing import CliRunner

from bricks import BaseModelRef, Library
from bricks.errors import ConfigError
from bricks.rows import InstructionRow
from bricks.training.lora import LoraTrainConfig, split_holdout, train_lora

WORDS = ["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op", "qr", "st", "uv", "wx", "yz", "ba", "dc", "fe", "hg", "ji",
         "lk", "nm"]
ROWS = [InstructionRow(str(i), "Double every letter.", w, "".join(c * 2 for c in w)) for i, w in enumerate(WORDS)]
QUICK = dict(max_steps=4, batch_size=4, warmup=2, eval_every=2, max_new_tokens=6, r=4, alpha=8)


@pytest.fixture(scope="module")
def tok():
    from bricks.toyworld.tokenizer import build_tokenizer

    return build_tokenizer()


def _model(tok):
    """A fresh random 2-layer Llama (hidden 32) on the toy world's character tokenizer: training wraps it in place."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                        eos_token_id=tok.eos_token_id)).eval()


def _lora(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


def _hand_written_loop(model, tok, cfg):
    """The loop #21 replaced (bricks/training/lora.py before it), kept here as the reference."""
    from peft import LoraConfig, get_peft_model

    from bricks.prompt import DEFAULT_TEMPLATE
    from bricks.training.sequences import collate, encode_example, warmup_cosine

    train_rows, _ = split_holdout(ROWS, cfg)
    torch.manual_seed(cfg.seed)
    model = get_peft_model(model, LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"], task_type="CAUSAL_LM"))
    encoded = [encode_example(tok, DEFAULT_TEMPLATE, r.instruction, r.input, r.output) for r in train_rows]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    model.train()
    for step in range(cfg.max_steps):
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(step, cfg.max_steps, cfg.warmup, cfg.lr)
        rng = random.Random(f"lora:{cfg.seed}:{step}")
        ids, mask, labels = collate([encoded[rng.randrange(len(encoded))] for _ in range(cfg.batch_size)],
                                    tok.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    return _lora(model)


def test_trainer_gives_the_hand_written_loops_adapter_and_accumulation_the_same(tok, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written where training runs
    cfg = LoraTrainConfig(**{**QUICK, "eval_every": 100, "lr": 1e-2})
    reference = _hand_written_loop(_model(tok), tok, cfg)
    calls = []
    result = train_lora(_model(tok), tok, ROWS, cfg, on_step=lambda *a: calls.append(a))
    new = _lora(result.model)
    assert new.keys() == reference.keys() and len(new) == 2 * 7 * 2  # A and B of 7 modules in 2 layers
    assert any(k.endswith("lora_B.default.weight") and v.abs().max() > 1e-4 for k, v in new.items())  # it trained
    assert max(float((new[k] - reference[k]).abs().max()) for k in new) < 1e-6
    assert [c[:2] for c in calls] == [(s, 4) for s in (1, 2, 3, 4)] and all(math.isfinite(c[2]) for c in calls)
    assert result.steps == 4 and result.holdout_size == 2 and [h[0] for h in result.history] == [4]
    assert not result.model.training
    halves = LoraTrainConfig(**{**QUICK, "eval_every": 100, "lr": 1e-2, "gradient_accumulation_steps": 2})
    accumulated = _lora(train_lora(_model(tok), tok, ROWS, halves).model)
    assert max(float((accumulated[k] - new[k]).abs().max()) for k in new) < 1e-5  # 2 x 2 rows == 4 rows a step
    assert list(tmp_path.iterdir()) == []


def test_early_stop_at_the_target_and_held_out_history(tok):
    result = train_lora(_model(tok), tok, ROWS, LoraTrainConfig(**{**QUICK, "max_steps": 10, "target_accuracy": 0.0}))
    assert result.steps == 2 and len(result.history) == 1 and result.history[0][0] == 2  # stopped at the 1st eval
    assert result.holdout_accuracy == result.history[0][1]
    full = train_lora(_model(tok), tok, ROWS, LoraTrainConfig(**{**QUICK, "max_steps": 5}))
    assert full.steps == 5 and [h[0] for h in full.history] == [2, 4, 5]  # every eval_every, and the last step


def test_a_checkpoint_dir_gets_adapter_safetensors_only(tok, tmp_path):
    from safetensors.torch import load_file

    result = train_lora(_model(tok), tok, ROWS, LoraTrainConfig(**QUICK, checkpoint_dir=str(tmp_path / "ck")))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    files = {p.name for p in (tmp_path / "ck" / "checkpoint-4").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files
    assert not files & {"optimizer.pt", "scheduler.pt", "rng_state.pth", "pytorch_model.bin"}
    saved = load_file(str(tmp_path / "ck" / "checkpoint-4" / "adapter_model.safetensors"))
    final = {k.replace(".default", ""): v for k, v in _lora(result.model).items()}
    assert saved.keys() == final.keys() and all(torch.equal(saved[k], final[k]) for k in saved)


def test_training_arguments_per_device_pure():
    from bricks.training.hf_trainer import PinnedTrainingArguments, trainer_settings

    cfg = LoraTrainConfig(batch_size=64, gradient_accumulation_steps=4, eval_every=50)
    gpu = trainer_settings(cfg, "cuda", bf16_supported=True, output_dir="/tmp/x")
    assert (gpu["bf16"], gpu["fp16"], gpu["use_cpu"], gpu["pinned_device"]) == (True, False, False, "cuda")
    assert gpu["dataloader_pin_memory"] and gpu["per_device_train_batch_size"] == 16
    assert gpu["gradient_accumulation_steps"] == 4 and gpu["report_to"] == "none"
    assert gpu["save_strategy"] == "no" and gpu["output_dir"] == "/tmp/x"
    assert trainer_settings(cfg, "cuda:1", bf16_supported=False, output_dir="/t")["bf16"] is False
    assert trainer_settings(cfg, "cuda:1", bf16_supported=True, output_dir="/t")["pinned_device"] == "cuda:1"
    with pytest.raises(ConfigError, match="bf16 training was asked for on 'cuda:1', but this GPU has no bfloat16"):
        trainer_settings(LoraTrainConfig(bf16=True), "cuda:1", bf16_supported=False, output_dir="/t")
    cpu = trainer_settings(cfg, "cpu", bf16_supported=False, output_dir="/t")
    assert (cpu["bf16"], cpu["use_cpu"], cpu["dataloader_pin_memory"]) == (False, True, False)
    saved = trainer_settings(LoraTrainConfig(checkpoint_dir="/ck", eval_every=7), "cpu", bf16_supported=False,
                             output_dir="/t")
    assert (saved["output_dir"], saved["save_strategy"], saved["save_steps"], saved["save_only_model"]) == \
           ("/ck", "steps", 7, True)
    args = PinnedTrainingArguments(**cpu)
    assert args.device == torch.device("cpu") and args.n_gpu == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 64, "gradient_accumulation_steps": 3}, "batch_size 64 is not divisible by "
                                                            "gradient_accumulation_steps 3"),
    ({"max_steps": 0}, "max_steps 0 is not valid; expected a whole number >= 1"),
    ({"holdout_fraction": 1.0}, "holdout_fraction 1.0 is not valid"),
    ({"lr": 0.0}, "lr 0.0 is not valid"),
])
def test_bad_settings_refused_in_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message) as e:
        LoraTrainConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_batches_are_the_seeded_draws_of_each_step():
    from bricks.training.hf_trainer import StepBatches

    examples = [([i], [i]) for i in range(7)]
    data = StepBatches(examples, steps=3, batch_size=5, seed=2)
    assert len(data) == 15
    for step in range(3):
        rng = random.Random(f"lora:2:{step}")
        assert [data[step * 5 + k] for k in range(5)] == [examples[rng.randrange(7)] for _ in range(5)]
    with pytest.raises(IndexError):
        data[15]


def test_cli_train_refuses_a_bad_accumulation_before_training(tmp_path):
    from orchestrator.cli import app

    lib = Library.create(tmp_path / "lib", BaseModelRef(name="tiny", fingerprint="sha256:aaa"), ["Do it."])
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"instruction": "Do it.", "input": "x", "output": "y"}) + "\n")
    res = CliRunner().invoke(app, ["bricks", "train", "--data", str(rows), "--id", "new", "--description", "d",
                                   "--library", str(lib.path), "--batch-size", "16", "--grad-accum", "3"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines == ["error: LoRA training batch_size 16 is not divisible by gradient_accumulation_steps 3"]


def test_continue_training_starts_from_the_saved_adapter(tok, tmp_path):
    from bricks.training.export import save_adapter

    first = train_lora(_model(tok), tok, ROWS, LoraTrainConfig(**QUICK))
    save_adapter(first.model, tmp_path / "v1")
    cfg = LoraTrainConfig(**{**QUICK, "max_steps": 2, "lr": 1e-9, "r": 8})  # r ignored: the adapter's shape is kept
    more = _lora(train_lora(_model(tok), tok, ROWS, cfg, init_from=str(tmp_path / "v1")).model)
    before = _lora(first.model)
    assert more.keys() == before.keys() and next(iter(more.values())).shape[0] == 4
    assert max(float((more[k] - before[k]).abs().max()) for k in more) < 1e-5  # a tiny lr: barely moved from v1
