"""Batched generation with a transformers causal LM (left-padded, greedy or sampled)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["generate_texts", "encode_prompt"]


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """The token ids of `prompt`: special tokens added, unless the prompt already starts with the BOS token (a
    chat template that writes its own), which would otherwise be there twice."""
    bos = getattr(tokenizer, "bos_token", None)
    return tokenizer(prompt, add_special_tokens=not (bos and prompt.startswith(bos))).input_ids


def generate_texts(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 32, batch_size: int = 256,
                   do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0) -> list[str]:
    """The completion of each prompt, without the prompt and without special tokens.

    Prompts are grouped by length so that a batch wastes little padding; results keep the input order.
    """
    import torch

    from bricks.device import model_device

    if not prompts:
        return []
    device = model_device(model)  # every input is built where the model's first layer is
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results: list[str] = [""] * len(prompts)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False}
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):  # left padding: every prompt ends at the last column
                ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]) :] = 1
            ids, mask = ids.to(device), mask.to(device)  # filled on the CPU, copied once per batch
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id, **sampling,
            )  # [B, width + new]
            for row, i in enumerate(chunk):
                results[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True)
    return results
