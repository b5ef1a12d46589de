"""Supervised sequences: prompt tokens masked out of the loss, output tokens and eos learned."""

from __future__ import annotations

import math
from collections.abc import Sequence

from bricks.prompt import PromptTemplate

__all__ = ["IGNORE_INDEX", "encode_example", "collate", "warmup_cosine"]

IGNORE_INDEX = -100


def encode_example(tokenizer, template: PromptTemplate, instruction: str, input: str,
                   output: str) -> tuple[list[int], list[int]]:
    """Token ids of prompt + output + eos, and labels that are IGNORE_INDEX on the prompt."""
    prompt_ids = tokenizer(template.render(instruction, input)).input_ids
    output_ids = tokenizer(output, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return prompt_ids + output_ids, [IGNORE_INDEX] * len(prompt_ids) + output_ids


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int, device=None):
    """Right-pad a batch: input_ids [B, T], attention_mask [B, T], labels [B, T] (shifted inside the model), on
    `device` (None: the CPU)."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    if device is not None:
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    return ids, mask, labels


def warmup_cosine(step: int, total: int, warmup: int, peak: float, floor_ratio: float = 0.1) -> float:
    """Linear warm-up to `peak`, then cosine decay to `floor_ratio * peak` at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor_ratio + (1 - floor_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
