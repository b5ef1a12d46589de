"""Train a customized brick: a LoRA adapter (PEFT) on instruction rows, for any Hugging Face causal LM.

The rows are split into a training part and a held-out part; training stops early once the held-out exact
match reaches the target. The adapter is saved in PEFT's format (safetensors) inside a brick folder.
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
from bricks.training.sequences import collate, encode_example, warmup_cosine

__all__ = ["LoraTrainConfig", "LoraTrainResult", "train_lora", "split_holdout"]

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int, float], None]


@dataclass(frozen=True)
class LoraTrainConfig:
    """LoRA shape and optimisation settings."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
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


def train_lora(base_model, tokenizer, rows: Sequence[InstructionRow], cfg: LoraTrainConfig = LoraTrainConfig(), *,
               template: PromptTemplate = DEFAULT_TEMPLATE, adapter_name: str = "default",
               on_step: StepCallback | None = None, init_from: str | None = None) -> LoraTrainResult:
    """Wrap `base_model` with a LoRA adapter and train it on `rows`; the base weights stay frozen.

    The adapter is fresh, or continues from the PEFT adapter folder `init_from` (updating a brick: its shape
    comes from that folder, not from `cfg`).
    """
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    if not rows:
        raise ConfigError("no training rows")
    train_rows, hold_rows = split_holdout(rows, cfg)
    torch.manual_seed(cfg.seed)
    peft_cfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    if init_from is not None:
        model = PeftModel.from_pretrained(base_model, init_from, adapter_name=adapter_name, is_trainable=True)
    else:
        model = get_peft_model(base_model, peft_cfg, adapter_name=adapter_name)
    from bricks.device import model_device

    device = model_device(model)  # batches go where the (frozen) base model and its fresh adapter are
    encoded = [encode_example(tokenizer, template, r.instruction, r.input, r.output) for r in train_rows]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    model.train()
    history: list[tuple[int, float]] = []
    accuracy = float("nan")
    step = 0
    for step in range(cfg.max_steps):
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(step, cfg.max_steps, cfg.warmup, cfg.lr)
        rng = random.Random(f"lora:{cfg.seed}:{step}")
        batch = [encoded[rng.randrange(len(encoded))] for _ in range(cfg.batch_size)]
        ids, mask, labels = collate(batch, tokenizer.pad_token_id, device)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if on_step:
            on_step(step + 1, cfg.max_steps, loss.item())
        if hold_rows and (step + 1) % cfg.eval_every == 0:
            accuracy = _holdout_accuracy(model, tokenizer, hold_rows, template, cfg.max_new_tokens)
            history.append((step + 1, accuracy))
            log.info("lora step %d loss %.4f held-out exact match %.3f", step + 1, loss.item(), accuracy)
            if accuracy >= cfg.target_accuracy:
                break
    steps = step + 1
    if not history or history[-1][0] != steps:
        accuracy = _holdout_accuracy(model, tokenizer, hold_rows, template, cfg.max_new_tokens)
        history.append((steps, accuracy))
    model.eval()
    return LoraTrainResult(model, steps, accuracy, len(hold_rows), tuple(history))
