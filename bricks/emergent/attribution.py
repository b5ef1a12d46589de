"""Attribution of a skill's gold answers to FFN neurons: how much each neuron matters, not how loud it is.

For every (skill, prompt, answer) example the model reads prompt + answer + EOS with teacher forcing; the loss
is the summed negative log-likelihood of the answer tokens and EOS. A neuron's score on the example is
sum over tokens of |a * dL/da| (a = act(gate(x)) * up(x), the input of down_proj): the first-order estimate,
token by token, of how much the gold answer's likelihood changes when the neuron is zeroed (Taylor pruning,
Molchanov et al. 2017). Per skill the score is its mean over examples, [layers, neurons]; ranked across layers
(`supervised_masks(..., criterion="attribution", scope="global")`) it gives a brick that keeps the neurons the
answers depend on, including those of dense layers that a mean-|activation| ranking under-serves.

Memory is O(skills x layers x neurons) whatever the number of examples; cost is one forward and backward pass
per batch. Model weights are not changed and no gradient is stored on them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from bricks.emergent.layout import ffn_layout
from bricks.prompt_batches import feed_batches

__all__ = ["attribution_scores"]


def _encode(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt, and of the answer followed by EOS (the answer as the model continues it)."""
    p = tokenizer(prompt).input_ids
    full = tokenizer(prompt + answer).input_ids
    if full[: len(p)] != p:  # the answer merges with the prompt's last token: split at the first difference
        cut = next(i for i, (x, y) in enumerate(zip(p, full)) if x != y)
        p = full[:cut]
    return p, full[len(p):] + [tokenizer.eos_token_id]


def attribution_scores(model, tokenizer, examples: Iterable[tuple[str, str, str]], *, batch_size: int = 32,
                       on_batch: Callable[[int], None] | None = None) -> dict[str, "object"]:
    """{skill: float [L, I]}: mean over the skill's (skill, prompt, answer) examples of sum_t |a * dL/da|."""
    import torch
    import torch.nn.functional as F

    from bricks.device import model_device

    layout = ffn_layout(model)
    L, I = layout.num_layers, layout.intermediate_size
    device = model_device(model)  # the batches go there; the per-skill sums are kept on the CPU
    acts: list = [None] * L

    def hook(layer):
        def pre(module, args):
            acts[layer] = args[0]  # down_proj's input; the graph through it is kept for autograd.grad
        return pre

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sums: dict[str, object] = {}
    counts: dict[str, int] = {}

    def run(batch: list[tuple[str, str, str]]) -> None:
        enc = [_encode(tokenizer, p, a) for _, p, a in batch]
        width = max(len(p) + len(a) for p, a in enc)
        ids = torch.full((len(enc), width), pad, dtype=torch.long)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        labels = torch.full((len(enc), width), -100, dtype=torch.long)
        for r, (p, a) in enumerate(enc):  # right padding: causal attention keeps real tokens unaffected
            ids[r, : len(p) + len(a)] = torch.tensor(p + a)
            mask[r, : len(p) + len(a)] = 1
            labels[r, len(p): len(p) + len(a)] = torch.tensor(a)
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        with torch.enable_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
            target = labels[:, 1:].flatten().to(logits.device)  # the lm_head's device (last GPU with a device_map)
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target, ignore_index=-100,
                                   reduction="sum")  # summed: each example's gradient is its own
            grads = torch.autograd.grad(loss, acts)
        m = mask[:, :, None].float()
        per = torch.stack([(a.detach().float() * g.float()).abs().mul(m.to(a.device)).sum(1).cpu()
                           for a, g in zip(acts, grads)], 1)  # [B, L, I]
        for r, (skill, _, _) in enumerate(batch):
            if skill not in sums:
                sums[skill] = torch.zeros(L, I, dtype=torch.float64)
                counts[skill] = 0
            sums[skill] += per[r].double()
            counts[skill] += 1

    try:
        feed_batches(model, examples, batch_size, run, layout.hook_neuron_inputs(hook), on_batch)
    finally:
        acts[:] = [None] * L  # the last batch's graph
    return {s: (v / counts[s]).float() for s, v in sums.items()}
