"""Expert profiling: stream (skill, prompt) pairs through a MoE model and count, per skill, how often the router
of every MoE layer selects each expert (its top-k), over the prompts' real tokens (padding left out).

Memory is O(skills x layers x experts), whatever the number of prompts. Dense layers of a partly sparse model
(Qwen2/3-MoE's `mlp_only_layers`) keep zero rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from bricks.errors import ConfigError
from bricks.expert_mask.layout import moe_layout
from bricks.prompt_batches import feed_batches, right_padded

__all__ = ["ExpertProfile", "profile_experts"]


@dataclass
class ExpertProfile:
    """Per-skill expert statistics. Tensors are [S, L, E] (skills, decoder layers, experts) unless noted."""

    skills: list[str]
    selected: "object"  # times the expert was among a token's top-k
    weight: "object"  # sum of the routing weights it got (after the router's top-k renormalisation)
    tokens: "object"  # [S] real tokens routed per skill
    prompts: "object"  # [S] prompts per skill
    moe_layers: tuple[int, ...]
    top_k: int

    @property
    def num_experts(self) -> int:
        return int(self.selected.shape[-1])

    def usage(self):
        """[S, L, E] share of a skill's tokens routed to each expert (a MoE layer's row sums to top_k)."""
        return self.selected / self.tokens.clamp(min=1)[:, None, None]

    def skill_index(self, skill: str) -> int:
        if skill not in self.skills:
            raise ConfigError(f"skill {skill!r} was not profiled; profiled skills: {', '.join(self.skills)}")
        return self.skills.index(skill)

    def save(self, path: Path) -> None:
        """Write the profile as one safetensors file (the skill names and layers in its metadata)."""
        from safetensors.torch import save_file

        tensors = {"selected": self.selected, "weight": self.weight, "tokens": self.tokens, "prompts": self.prompts}
        meta = {"skills": json.dumps(self.skills), "moe_layers": json.dumps(list(self.moe_layers)),
                "top_k": str(self.top_k)}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: Path) -> "ExpertProfile":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}
        missing = [k for k in ("selected", "weight", "tokens", "prompts") if k not in t] + \
                  [k for k in ("skills", "moe_layers", "top_k") if k not in meta]
        if missing:
            raise ConfigError(f"{path}: not an expert profile (missing {', '.join(missing)})")
        return cls(json.loads(meta["skills"]), t["selected"], t["weight"], t["tokens"], t["prompts"],
                   tuple(json.loads(meta["moe_layers"])), int(meta["top_k"]))


def profile_experts(model, tokenizer, prompts: Iterable[tuple[str, str]], *, batch_size: int = 32,
                    on_batch: Callable[[int], None] | None = None) -> ExpertProfile:
    """Count the experts every MoE layer's router selects over (skill, prompt) pairs (see the module docstring)."""
    import torch

    from bricks.device import model_device

    layout = moe_layout(model)
    dims = layout.dims
    L, E = dims.num_layers, dims.num_experts
    device = model_device(model)  # the batches go there; the statistics are kept on the CPU
    skills: dict[str, int] = {}
    selected = torch.zeros(0, L, E, dtype=torch.float64)
    weight = torch.zeros(0, L, E, dtype=torch.float64)
    tokens = torch.zeros(0, dtype=torch.float64)
    count = torch.zeros(0, dtype=torch.long)
    captured: dict[int, tuple] = {}
    shape: list = [None]  # (B, T) of the running batch

    def hook(layer):
        def post(module, args, output):
            _, scores, index = output  # [B*T, k] each
            B, T = shape[0]
            hits = torch.zeros(B * T, E, dtype=torch.float32, device=index.device)
            mass = torch.zeros(B * T, E, dtype=torch.float32, device=index.device)
            hits.scatter_add_(1, index, torch.ones_like(index, dtype=torch.float32))  # [B*T, E]
            mass.scatter_add_(1, index, scores.float())  # [B*T, E]
            captured[layer] = (hits.view(B, T, E), mass.view(B, T, E))
        return post

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def run(batch: list[tuple[str, str]]) -> None:
        nonlocal selected, weight, tokens, count
        ids, mask = right_padded([tokenizer(p).input_ids for _, p in batch], pad)
        shape[0] = tuple(ids.shape)
        captured.clear()
        with torch.inference_mode():
            model(input_ids=ids.to(device), attention_mask=mask.to(device))
        real = mask.double()[:, :, None]  # [B, T, 1]
        hits = torch.zeros(len(batch), L, E, dtype=torch.float64)  # [B, L, E]
        mass = torch.zeros(len(batch), L, E, dtype=torch.float64)
        for layer, (h, w) in captured.items():
            hits[:, layer] = (h.cpu().double() * real).sum(1)
            mass[:, layer] = (w.cpu().double() * real).sum(1)
        for r, (skill, _) in enumerate(batch):
            if skill not in skills:
                skills[skill] = len(skills)
                selected = torch.cat([selected, torch.zeros(1, L, E, dtype=torch.float64)])
                weight = torch.cat([weight, torch.zeros(1, L, E, dtype=torch.float64)])
                tokens = torch.cat([tokens, torch.zeros(1, dtype=torch.float64)])
                count = torch.cat([count, torch.zeros(1, dtype=torch.long)])
            s = skills[skill]
            selected[s] += hits[r]
            weight[s] += mass[r]
            tokens[s] += float(mask[r].sum())
            count[s] += 1

    handles = [r.register_forward_hook(hook(i)) for i, r in layout.routers.items()]
    feed_batches(model, prompts, batch_size, run, handles, on_batch)
    if not skills:
        raise ConfigError("no prompts to profile the experts on")
    return ExpertProfile(list(skills), selected.float(), weight.float(), tokens.float(), count, dims.moe_layers,
                         dims.top_k)
