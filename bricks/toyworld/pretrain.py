"""Pre-train the toy world's base model: a small LlamaForCausalLM, from scratch, on the emergent skills.

Each step draws a fresh batch of training-split examples from a generator seeded by (seed, step), so a run
resumed from a checkpoint sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bricks.prompt import DEFAULT_TEMPLATE
from bricks.toyworld.skills import EMERGENT_SKILLS
from bricks.toyworld.tasks import sample_single
from bricks.training.sequences import collate, encode_example, warmup_cosine

__all__ = ["PretrainConfig", "pretrain", "model_config"]

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int, float], None]


@dataclass(frozen=True)
class PretrainConfig:
    """Model shape and optimisation settings for the toy base model."""

    steps: int = 7_000
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 300
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 2  # head dim 64: what vLLM's CPU attention supports
    intermediate_size: int = 512
    long_fraction: float = 0.2  # share of 9-16 letter words, so steps after `double` stay in distribution
    checkpoint_every: int = 500


def model_config(tokenizer, cfg: PretrainConfig):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        head_dim=cfg.hidden_size // cfg.num_heads, max_position_embeddings=256, rms_norm_eps=1e-5,
        tie_word_embeddings=True, hidden_act="silu", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, torch_dtype="float32",
    )


def _batch(tokenizer, cfg: PretrainConfig, step: int):
    rng = random.Random(f"pretrain:{cfg.seed}:{step}")
    rows = [sample_single(rng, rng.choice(EMERGENT_SKILLS), "train", long_fraction=cfg.long_fraction)
            for _ in range(cfg.batch_size)]
    return collate([encode_example(tokenizer, DEFAULT_TEMPLATE, r.instruction, r.input, r.output) for r in rows],
                   tokenizer.pad_token_id)


def _save_checkpoint(ckpt: Path, model, optimizer, step: int, cfg: PretrainConfig) -> None:
    from safetensors.torch import save_file

    tmp = ckpt.with_name(ckpt.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
              str(tmp / "model.safetensors"))
    names = {id(p): n for n, p in model.named_parameters()}
    opt_state = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                opt_state[f"{names[id(p)]}::{key}"] = value.detach().reshape(value.shape).contiguous()
    save_file(opt_state, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "config": asdict(cfg)}))
    if ckpt.exists():
        old = ckpt.with_name(ckpt.name + ".old")
        os.replace(ckpt, old)
        os.replace(tmp, ckpt)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        os.replace(tmp, ckpt)


def _load_checkpoint(ckpt: Path, model, optimizer) -> int:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=False)
    params = dict(model.named_parameters())
    for key, value in load_file(str(ckpt / "optimizer.safetensors")).items():
        name, field = key.split("::")
        optimizer.state[params[name]][field] = value
    return int(json.loads((ckpt / "state.json").read_text())["step"])


def pretrain(out_dir: Path, tokenizer, cfg: PretrainConfig, *, on_step: StepCallback | None = None,
             on_checkpoint: Callable[[int, object], None] | None = None):
    """Train (or resume) and return the model; checkpoints go to `out_dir/checkpoint` every few hundred steps."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(model_config(tokenizer, cfg))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98),
    )
    ckpt = Path(out_dir) / "checkpoint"
    start = _load_checkpoint(ckpt, model, optimizer) if (ckpt / "state.json").exists() else 0
    if start:
        log.info("resuming pre-training at step %d from %s", start, ckpt)
    model.train()
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(step, cfg.steps, cfg.warmup, cfg.lr)
        ids, mask, labels = _batch(tokenizer, cfg, step)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if on_step:
            on_step(step + 1, cfg.steps, loss.item())
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            _save_checkpoint(ckpt, model, optimizer, step + 1, cfg)
            log.info("step %d loss %.4f (%.1f s)", step + 1, loss.item(), time.perf_counter() - t0)
            if on_checkpoint:
                model.eval()
                on_checkpoint(step + 1, model)
                model.train()
    model.eval()
    return model
