"""Train a customized brick: a LoRA adapter (PEFT) on instruction rows, for any Hugging Face causal LM.

The rows are split into a training part and a held-out part; training runs on Hugging Face `Trainer`
(`bricks.training.hf_trainer`) on the model's own device (bf16 autocast on a GPU that supports it) and stops early
once the held-out exact match reaches the target. The adapter is saved in PEFT's format (safetensors) inside a
brick folder (`bricks.training.export`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bricks.errors import ConfigError
from bricks.evaluation import exact_match_by_skill
from bricks.prompt import DEFAULT_TEMPLATE, PromptTemplate
from bricks.rows import InstructionRow
from bricks.training.sequences import encode_example

__all__ = ["LoraTrainConfig", "LoraTrainResult", "train_lora", "split_holdout"]

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int, float], None]


@dataclass(frozen=True)
class LoraTrainConfig:
    """LoRA shape and optimisation settings.

    `target_modules` () takes the model family's defaults (`lora_target_modules`: Llama's q/k/v/o_proj and
    gate/up/down_proj, GPT-2's c_attn, c_proj, c_fc...); `target_parameters` are PEFT's (fused weights such as a
    mixture of experts' `mlp.experts.gate_up_proj`), none by default. `batch_size` rows make one optimizer step,
    in `gradient_accumulation_steps` micro-batches (which must divide it). `bf16` None: bf16 autocast on a CUDA
    device that supports it, float32 elsewhere. `checkpoint_dir` None writes no checkpoint anywhere; a folder gets
    the adapter (safetensors) every `save_every` steps (0: every `eval_every`).
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ()  # (): the model family's defaults (bricks.training.targets)
    lr: float = 4e-3
    max_steps: int = 3000
    batch_size: int = 64
    warmup: int = 50
    weight_decay: float = 0.0
    seed: int = 0
    holdout_fraction: float = 0.1
    max_holdout: int = 200
    eval_every: int = 250
    target_accuracy: float = 0.99  # stop early once the held-out exact match reaches this
    max_new_tokens: int = 40
    gradient_accumulation_steps: int = 1
    bf16: bool | None = None
    checkpoint_dir: str | None = None
    save_every: int = 0
    target_parameters: tuple[str, ...] = ()

    def __post_init__(self):
        positive = {"r": self.r, "max_steps": self.max_steps, "batch_size": self.batch_size,
                    "eval_every": self.eval_every, "gradient_accumulation_steps": self.gradient_accumulation_steps,
                    "max_new_tokens": self.max_new_tokens}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"LoRA training {name} {value!r} is not valid; expected a whole number >= 1")
        at_least_zero = {"warmup": self.warmup, "save_every": self.save_every, "max_holdout": self.max_holdout}
        for name, value in at_least_zero.items():
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"LoRA training {name} {value!r} is not valid; expected a whole number >= 0")
        if self.batch_size % self.gradient_accumulation_steps:
            raise ConfigError(f"LoRA training batch_size {self.batch_size} is not divisible by "
                              f"gradient_accumulation_steps {self.gradient_accumulation_steps}")
        if not self.lr > 0:
            raise ConfigError(f"LoRA training lr {self.lr!r} is not valid; expected a number > 0")
        if not 0 <= self.holdout_fraction < 1:
            raise ConfigError(f"LoRA training holdout_fraction {self.holdout_fraction!r} is not valid; "
                              "expected 0 <= fraction < 1")


@dataclass(frozen=True)
class LoraTrainResult:
    """The trained PEFT model and what was measured on the held-out rows."""

    model: object  # peft.PeftModel
    steps: int
    holdout_accuracy: float
    holdout_size: int
    history: tuple[tuple[int, float], ...] = field(default=())


def split_holdout(rows: Sequence[InstructionRow], cfg: LoraTrainConfig) -> tuple[list[InstructionRow], list[InstructionRow]]:
    """A seeded split of rows into (train, held-out)."""
    order = list(range(len(rows)))
    random.Random(f"holdout:{cfg.seed}").shuffle(order)
    n_hold = min(cfg.max_holdout, int(len(rows) * cfg.holdout_fraction)) if len(rows) >= 10 else 0
    hold = [rows[i] for i in order[:n_hold]]
    train = [rows[i] for i in order[n_hold:]]
    return train, hold


def _holdout_accuracy(model, tokenizer, rows: Sequence[InstructionRow], template: PromptTemplate,
                      max_new_tokens: int) -> float:
    if not rows:
        return float("nan")
    model.eval()
    scores = exact_match_by_skill(model, tokenizer, [{**r.as_dict(), "skills": ["all"]} for r in rows],
                                  template=template, max_new_tokens=max_new_tokens)
    model.train()
    return scores["all"].accuracy


def _conv1d(model) -> bool:
    """Whether the model's family stores its projections as GPT-2's Conv1D (PEFT's fan_in_fan_out)."""
    from bricks.families import FAMILIES, model_type_of

    family = FAMILIES.get(model_type_of(model.config) or "") if hasattr(model, "config") else None
    return bool(family and family.conv1d)


def train_lora(base_model, tokenizer, rows: Sequence[InstructionRow], cfg: LoraTrainConfig = LoraTrainConfig(), *,
               template: PromptTemplate = DEFAULT_TEMPLATE, adapter_name: str = "default",
               on_step: StepCallback | None = None, init_from: str | None = None) -> LoraTrainResult:
    """Wrap `base_model` with a LoRA adapter and train it on `rows` (Hugging Face `Trainer`, on the model's
    device); the base weights stay frozen.

    The adapter is fresh, or continues from the PEFT adapter folder `init_from` (updating a brick: its shape
    comes from that folder, not from `cfg`). `on_step(step, max_steps, loss)` is called after every step.
    """
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from bricks.device import model_device
    from bricks.training.hf_trainer import run_trainer
    from bricks.training.targets import lora_target_modules

    if not rows:
        raise ConfigError("no training rows")
    train_rows, hold_rows = split_holdout(rows, cfg)
    torch.manual_seed(cfg.seed)
    peft_cfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=list(cfg.target_modules or lora_target_modules(base_model)),
                          target_parameters=list(cfg.target_parameters) or None,
                          fan_in_fan_out=_conv1d(base_model), task_type="CAUSAL_LM")
    if init_from is not None:
        model = PeftModel.from_pretrained(base_model, init_from, adapter_name=adapter_name, is_trainable=True)
    else:
        model = get_peft_model(base_model, peft_cfg, adapter_name=adapter_name)
    device = model_device(model)  # training runs where the (frozen) base model and its fresh adapter are
    encoded = [encode_example(tokenizer, template, r.instruction, r.input, r.output) for r in train_rows]

    def evaluate() -> float:
        return _holdout_accuracy(model, tokenizer, hold_rows, template, cfg.max_new_tokens)

    model.train()
    outcome = run_trainer(model, encoded, tokenizer.pad_token_id, cfg, device=str(device),
                          evaluate=evaluate if hold_rows else None, on_step=on_step)
    history = list(outcome.history)
    accuracy = history[-1][1] if history else float("nan")
    if not history or history[-1][0] != outcome.steps:
        accuracy = evaluate()
        history.append((outcome.steps, accuracy))
    model.eval()
    return LoraTrainResult(model, outcome.steps, accuracy, len(hold_rows), tuple(history))
