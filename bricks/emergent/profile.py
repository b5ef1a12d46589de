"""Neuron profiling: stream prompts through the model and keep per-skill statistics of every FFN neuron.

For each prompt, the activation act(gate(x)) * up(x) of every neuron is averaged (in absolute value) over the
prompt's tokens; per skill, the running sum and sum of squares of these prompt means and the share of tokens on
which the neuron is active (|a| > eps) are kept. Memory is O(skills x layers x neurons) plus a fixed-size
reservoir of prompt means (for clustering), whatever the number of prompts.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bricks.emergent.layout import ffn_layout
from bricks.errors import ConfigError
from bricks.prompt_batches import feed_batches, right_padded

__all__ = ["NeuronProfile", "profile_neurons"]


@dataclass
class NeuronProfile:
    """Per-skill neuron statistics. Tensors are [S, L, I] (skills, layers, neurons) unless noted."""

    skills: list[str]
    count: "object"  # [S] prompts per skill
    sum_abs: "object"  # sum over prompts of the prompt-mean |activation|
    sum_sq: "object"  # sum over prompts of its square
    sum_active: "object"  # sum over prompts of the share of tokens with |activation| > eps
    tokens_active: "object"  # [L] active (neuron, token) pairs per layer, over all prompts
    tokens: int = 0
    reservoir: "object" = None  # [R, L, I] prompt means of a uniform sample of prompts
    reservoir_skills: list[str] = field(default_factory=list)
    reservoir_prompts: list[str] = field(default_factory=list)
    attribution: "object" = None  # [S, L, I] gold-answer attribution (bricks.emergent.attribution), if computed

    def add_attribution(self, scores) -> None:
        """Attach {skill: [L, I]} attribution scores (`attribution_scores`); every profiled skill needs one."""
        import torch

        missing = [s for s in self.skills if s not in scores]
        if missing:
            raise ConfigError(f"no attribution scores for skill(s) {', '.join(missing)}")
        self.attribution = torch.stack([scores[s].float() for s in self.skills])

    @property
    def mean_abs(self):
        return self.sum_abs / self.count.clamp(min=1)[:, None, None]

    @property
    def frequency(self):
        return self.sum_active / self.count.clamp(min=1)[:, None, None]

    def sparsity(self):
        """[L] share of (neuron, token) pairs that are inactive, per layer."""
        neurons = self.sum_abs.shape[-1]
        return 1.0 - self.tokens_active / max(1, self.tokens * neurons)

    def specialization(self):
        """[S, L, I] how much more a neuron fires for a skill than for the others, in pooled standard deviations.

        (mean over the skill's prompts - mean over all other prompts) / pooled std: a streaming d' score.
        """
        n = self.count.clamp(min=1)[:, None, None].double()
        s1, s2 = self.sum_abs.double(), self.sum_sq.double()
        n_all, s1_all, s2_all = n.sum(0), s1.sum(0), s2.sum(0)
        n_rest = (n_all - n).clamp(min=1)
        mean_in, mean_out = s1 / n, (s1_all - s1) / n_rest
        var_in = (s2 / n - mean_in**2).clamp(min=0)
        var_out = ((s2_all - s2) / n_rest - mean_out**2).clamp(min=0)
        pooled = ((var_in + var_out) / 2).sqrt().clamp(min=1e-8)
        return ((mean_in - mean_out) / pooled).float()

    def save(self, path: Path) -> None:
        import json

        from safetensors.torch import save_file

        tensors = {"count": self.count, "sum_abs": self.sum_abs, "sum_sq": self.sum_sq,
                   "sum_active": self.sum_active, "tokens_active": self.tokens_active}
        if self.reservoir is not None:
            tensors["reservoir"] = self.reservoir
        if self.attribution is not None:
            tensors["attribution"] = self.attribution
        meta = {"skills": json.dumps(self.skills), "tokens": str(self.tokens),
                "reservoir_skills": json.dumps(self.reservoir_skills),
                "reservoir_prompts": json.dumps(self.reservoir_prompts)}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: Path) -> "NeuronProfile":
        import json

        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            t = {k: f.get_tensor(k) for k in f.keys()}
        return cls(json.loads(meta["skills"]), t["count"], t["sum_abs"], t["sum_sq"], t["sum_active"],
                   t["tokens_active"], int(meta["tokens"]), t.get("reservoir"), json.loads(meta["reservoir_skills"]),
                   json.loads(meta["reservoir_prompts"]), t.get("attribution"))


def profile_neurons(model, tokenizer, prompts: Iterable[tuple[str, str]], *, batch_size: int = 64,
                    eps: float = 0.05, reservoir: int = 256, seed: int = 0,
                    on_batch: Callable[[int], None] | None = None) -> NeuronProfile:
    """Profile every FFN neuron over (skill, prompt) pairs, streamed in batches (see the module docstring)."""
    import torch

    from bricks.device import model_device

    layout = ffn_layout(model)
    L, I = layout.num_layers, layout.intermediate_size
    device = model_device(model)  # the batches go there; the statistics are kept on the CPU
    skills: dict[str, int] = {}
    acc = {k: torch.zeros(0, L, I, dtype=torch.float64) for k in ("sum_abs", "sum_sq", "sum_active")}
    count = torch.zeros(0, dtype=torch.long)
    tokens_active = torch.zeros(L, dtype=torch.float64)
    res = torch.zeros(reservoir, L, I)
    res_skills: list[str] = []
    res_prompts: list[str] = []
    rng = random.Random(seed)
    seen = 0
    tokens = 0
    captured: list = [None] * L
    mask_holder: list = [None]

    def hook(layer):
        def pre(module, args):
            a = args[0].detach().abs().float()  # [B, T, I]
            m = mask_holder[0][:, :, None].to(a.device)  # [B, T, 1] real tokens (a layer's own device)
            n = m.sum(1).clamp(min=1)  # [B, 1]
            active = (a > eps) & m.bool()
            captured[layer] = ((a * m).sum(1) / n, active.sum(1) / n)  # prompt mean |a|, active share: [B, I]
            tokens_active[layer] += float(active.sum())
        return pre

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def run(batch: list[tuple[str, str]]) -> None:
        nonlocal count, seen, tokens
        ids, mask = right_padded([tokenizer(p).input_ids for _, p in batch], pad)
        ids, mask = ids.to(device), mask.to(device)
        mask_holder[0] = mask.float()
        tokens += int(mask.sum())
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask)
        means = torch.stack([c[0].cpu() for c in captured], 1)  # [B, L, I]
        shares = torch.stack([c[1].cpu() for c in captured], 1)  # [B, L, I]
        for r, (skill, prompt) in enumerate(batch):
            if skill not in skills:
                skills[skill] = len(skills)
                for k in acc:
                    acc[k] = torch.cat([acc[k], torch.zeros(1, L, I, dtype=torch.float64)])
                count = torch.cat([count, torch.zeros(1, dtype=torch.long)])
            s = skills[skill]
            m = means[r].double()
            acc["sum_abs"][s] += m
            acc["sum_sq"][s] += m * m
            acc["sum_active"][s] += shares[r].double()
            count[s] += 1
            if seen < reservoir:  # reservoir sampling: every prompt equally likely to be kept
                res[seen] = means[r]
                res_skills.append(skill)
                res_prompts.append(prompt)
            else:
                j = rng.randrange(seen + 1)
                if j < reservoir:
                    res[j], res_skills[j], res_prompts[j] = means[r], skill, prompt
            seen += 1

    feed_batches(model, prompts, batch_size, run, layout.hook_neuron_inputs(hook), on_batch)
    kept = min(seen, reservoir)
    return NeuronProfile(list(skills), count, acc["sum_abs"].float(), acc["sum_sq"].float(), acc["sum_active"].float(),
                         tokens_active.float(), tokens, res[:kept].clone(), res_skills[:kept], res_prompts[:kept])
