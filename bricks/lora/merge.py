"""Merged LoRA adapters computed from the adapters' own tensors, without a model.

`merge_loras` reproduces what PEFT's `LoraModel.add_weighted_adapter` computes (peft 0.21: cat, linear, svd, ties,
ties_svd, dare_linear, dare_ties, dare_linear_svd, dare_ties_svd, magnitude_prune), module by module, with
PEFT's own tensor functions (`peft.utils.merge_utils`). DARE drops parameters at random: when `seed` is given
the global torch generator is seeded as the transformers executor seeds it before `add_weighted_adapter`, and
the random numbers PEFT draws while it injects the new adapter (its layers' default initialization) are drawn
too, so that DARE drops the same parameters (`tests/unit/test_lora_merge.py` checks every method against PEFT).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bricks.lora.brick import ADAPTER_CONFIG, ADAPTER_WEIGHTS

if TYPE_CHECKING:
    import torch

__all__ = ["LoraTensors", "merge_loras", "module_order", "default_module_key", "MERGE_RANK_RULES"]

log = logging.getLogger(__name__)

_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")
_PREFIX = "base_model.model."  # PEFT's prefix of tensor names in adapter_model.safetensors
_LINEAR_FAMILY = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
_SVD_FAMILY = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
# How PEFT sizes the merged adapter: same rank for the A/B-factor methods, sum for cat, max for the svd methods.
MERGE_RANK_RULES = {**{m: "same" for m in _LINEAR_FAMILY}, "cat": "sum", **{m: "max" for m in _SVD_FAMILY}}
# Registration order of the projections in Llama/Mistral/Qwen-style decoder layers (their `named_modules` order).
_PART_RANK = {"self_attn": 0, "mlp": 1, "q_proj": 0, "k_proj": 1, "v_proj": 2, "o_proj": 3,
              "gate_proj": 0, "up_proj": 1, "down_proj": 2}


@dataclass(frozen=True)
class LoraTensors:
    """One LoRA adapter in memory: its `adapter_config.json` and tensors by their PEFT file names."""

    config: dict
    tensors: dict[str, torch.Tensor]

    @classmethod
    def from_dir(cls, folder: Path) -> "LoraTensors":
        """Read a PEFT adapter folder (safetensors only)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        return cls(config, load_file(str(folder / ADAPTER_WEIGHTS)))

    def save(self, folder: Path) -> None:
        """Write `adapter_config.json` + `adapter_model.safetensors` into the existing `folder`."""
        from safetensors.torch import save_file

        folder = Path(folder)
        (folder / ADAPTER_CONFIG).write_text(json.dumps(self.config, indent=2, sort_keys=True), encoding="utf-8")
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(folder / ADAPTER_WEIGHTS),
                  metadata={"format": "pt"})

    @property
    def rank(self) -> int:
        return int(self.config["r"])

    @property
    def scaling(self) -> float:
        """PEFT's scaling of B @ A: lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA."""
        alpha = float(self.config["lora_alpha"])
        return alpha / math.sqrt(self.rank) if self.config.get("use_rslora") else alpha / self.rank

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def modules(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{module path (as in the file): (A (r, in), B (out, r))}, upcast to float32 as PEFT loads them."""
        import torch

        parts: dict[str, dict[str, torch.Tensor]] = {}
        for name, t in self.tensors.items():
            m = _KEY.match(name)
            if not m:
                raise ValueError(f"cannot merge adapter tensor {name!r}: only lora_A / lora_B weights are supported")
            if t.dtype in (torch.float16, torch.bfloat16):
                t = t.float()  # PEFT's autocast_adapter_dtype: half-precision adapters are loaded as float32
            parts.setdefault(m["module"], {})[m["ab"]] = t
        missing = [mod for mod, ab in parts.items() if set(ab) != {"A", "B"}]
        if missing:
            raise ValueError(f"adapter modules without both lora_A and lora_B: {missing[:3]}")
        return {mod: (ab["A"], ab["B"]) for mod, ab in parts.items()}


def _check_supported(adapter: LoraTensors) -> None:
    cfg = adapter.config
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"cannot merge a {cfg.get('peft_type')} adapter, only LORA")
    for option in ("rank_pattern", "alpha_pattern"):
        if cfg.get(option):
            raise ValueError(f"cannot merge adapters with a per-module {option}")
    for option in ("use_dora", "lora_bias"):
        if cfg.get(option):
            raise ValueError(f"cannot merge adapters with {option}=true")


def default_module_key(module: str) -> tuple:
    """Sort key giving a Llama/Mistral/Qwen-style model's `named_modules` order: layer numbers numerically,
    attention before MLP, q, k, v, o and gate, up, down projections in that order, other names alphabetically."""
    return tuple((0, int(p), "") if p.isdigit() else (1, _PART_RANK.get(p, 99), p) for p in module.split("."))


def module_order(model_config, trust_remote_code: bool = False) -> list[str]:
    """The `named_modules` order of the model `model_config` describes, from a skeleton on the meta device
    (no weights are allocated): the order in which PEFT merges, and DARE draws random numbers, module by module."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(model_config, trust_remote_code=trust_remote_code)
    return [name for name, _ in skeleton.named_modules()]


def _merged_config(adapters: Sequence[LoraTensors], rank: int) -> dict:
    """PEFT's merged config: the first adapter's, with r = lora_alpha = the merged rank and the union of targets."""
    targets = [a.config.get("target_modules") for a in adapters]
    if len({type(t) for t in targets}) > 1:
        raise ValueError("cannot merge adapters whose target_modules mix lists and strings")
    if isinstance(targets[0], str):
        union: list[str] | str = "|".join(f"({t})" for t in targets)
    else:
        union = sorted(set().union(*(set(t or ()) for t in targets)))
    return {**adapters[0].config, "r": rank, "lora_alpha": rank, "target_modules": union, "alpha_pattern": {},
            "rank_pattern": {}, "inference_mode": True}


def _replay_injection_draws(shapes: Sequence[tuple[int, int]], rank: int, init_lora_weights: object) -> None:
    """Draw the random numbers `add_weighted_adapter` draws while it injects the new adapter: per module
    nn.Linear(in, r) and nn.Linear(r, out) are initialized, then lora_A again as `init_lora_weights` says."""
    import torch

    a = math.sqrt(5)
    for fan_in, fan_out in shapes:
        torch.nn.init.kaiming_uniform_(torch.empty(rank, fan_in), a=a)  # lora_A's nn.Linear: (r, in)
        torch.nn.init.kaiming_uniform_(torch.empty(fan_out, rank), a=a)  # lora_B's nn.Linear: (out, r)
        if init_lora_weights is True:
            torch.nn.init.kaiming_uniform_(torch.empty(rank, fan_in), a=a)
        elif isinstance(init_lora_weights, str) and init_lora_weights.lower() == "gaussian":
            torch.nn.init.normal_(torch.empty(rank, fan_in), std=1 / rank)
        elif init_lora_weights is not False:
            raise ValueError(f"cannot reproduce DARE's random drops for init_lora_weights={init_lora_weights!r}")


def _cat(present: list[tuple[torch.Tensor, torch.Tensor, float, float]],
         rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    # A_i (r_i, in) scaled by weight * scaling, B_i (out, r_i); merged A (rank, in), B (out, rank), zero padded
    import torch

    loras_a = torch.cat([a * w * s for a, _, w, s in present], dim=0)
    loras_b = torch.cat([b for _, b, _, _ in present], dim=1)
    merged_a = present[0][0].new_zeros(rank, loras_a.shape[1])
    merged_b = present[0][1].new_zeros(loras_b.shape[0], rank)
    merged_a[: loras_a.shape[0], :] = loras_a
    merged_b[:, : loras_b.shape[1]] = loras_b
    return merged_a, merged_b


def _combine(method: str, tensors: list[torch.Tensor], weights: torch.Tensor, density,
             sign_method: str) -> torch.Tensor:
    """PEFT's combination of same-shape tensors for `method` (linear, ties, dare_linear, dare_ties or
    magnitude_prune; an `_svd` method combines by its base method)."""
    from peft.utils import merge_utils as mu

    base = "linear" if method == "svd" else method.removesuffix("_svd")
    if base == "linear":
        return mu.task_arithmetic(tensors, weights)
    if base == "ties":
        return mu.ties(tensors, weights, density, sign_method)
    if base == "dare_linear":
        return mu.dare_linear(tensors, weights, density)
    if base == "dare_ties":
        return mu.dare_ties(tensors, weights, density, sign_method)
    return mu.magnitude_prune(tensors, weights, density)


def _factors(method: str, present, density, sign_method: str) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    # sqrt(|w * s|) on each factor, the sign on A only: B_i @ A_i is scaled by w * s
    weights_a, weights_b = [], []
    for _, _, w, s in present:
        ws = w * s
        weights_a.append(math.sqrt(abs(ws)) * (1 if ws >= 0 else -1))
        weights_b.append(math.sqrt(abs(ws)))
    out = []
    for tensors, weights in (([a for a, _, _, _ in present], torch.tensor(weights_a)),
                             ([b for _, b, _, _ in present], torch.tensor(weights_b))):
        out.append(_combine(method, tensors, weights, density, sign_method).to(tensors[0].dtype))
    return out[0], out[1]  # A (r, in), B (out, r)


def _svd(method: str, present, rank: int, density, sign_method: str) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    deltas = [(b @ a) * s for a, b, _, s in present]  # each (out, in): PEFT's get_delta_weight
    weights = torch.tensor([w for _, _, w, _ in present])
    delta = _combine(method, deltas, weights, density, sign_method)
    u, s, vh = torch.linalg.svd(delta, full_matrices=True)  # u (out, out), s (min,), vh (in, in)
    u = u[:, :rank] @ torch.diag(s[:rank])  # (out, rank)
    return vh[:rank, :], u  # A (rank, in), B (out, rank)


def merge_loras(adapters: Sequence[LoraTensors], weights: Sequence[float], method: str,
                density: float | None = None, *, seed: int | None = None, module_order: Sequence[str] | None = None,
                majority_sign_method: str = "total") -> LoraTensors:
    """The adapter PEFT's `add_weighted_adapter(adapters, weights, combination_type=method, density=density)`
    computes, from the adapters' tensors alone.

    `seed`: seed torch's global generator first (inside `fork_rng`, so the caller's stream is untouched), as the
    executors do for DARE. `module_order`: the model's module paths in `named_modules` order (see `module_order`),
    which decides which random numbers each module's DARE drops use; `default_module_key`'s order otherwise.
    """
    import torch

    if len(adapters) != len(weights) or not adapters:
        raise ValueError(f"{len(adapters)} adapters and {len(weights)} weights: need as many, at least one")
    for adapter in adapters:
        _check_supported(adapter)
    method = "linear" if len(adapters) == 1 else method  # as PEFT: one adapter can only be scaled
    rule = MERGE_RANK_RULES.get(method)
    if rule is None:
        raise ValueError(f"unknown merge method {method!r}; one of {', '.join(MERGE_RANK_RULES)}")
    if density is None and method not in ("linear", "cat", "svd"):
        raise ValueError(f"merge method {method!r} needs a density")
    ranks = [a.rank for a in adapters]
    if rule == "same" and len(set(ranks)) != 1:
        raise ValueError(f"merge method {method!r} needs adapters of one rank, got ranks {ranks}")
    rank = {"same": ranks[0], "sum": sum(ranks), "max": max(ranks)}[rule]
    mods = [a.modules() for a in adapters]
    scalings = [a.scaling for a in adapters]
    names = set().union(*mods)
    if module_order is not None:
        position = {name: i for i, name in enumerate(module_order)}
        unknown = sorted(n for n in names if n.removeprefix(_PREFIX) not in position)
        if unknown:
            raise ValueError(f"adapter modules not in the model: {unknown[:3]}")
        ordered = sorted(names, key=lambda n: position[n.removeprefix(_PREFIX)])
    else:
        ordered = sorted(names, key=lambda n: default_module_key(n.removeprefix(_PREFIX)))

    def run() -> dict[str, torch.Tensor]:
        if method.startswith("dare"):
            shapes = []
            for name in ordered:
                a, b = next(m[name] for m in mods if name in m)
                shapes.append((a.shape[1], b.shape[0]))
            _replay_injection_draws(shapes, rank, adapters[0].config.get("init_lora_weights", True))
        out: dict[str, torch.Tensor] = {}
        for name in ordered:
            present = [(m[name][0], m[name][1], float(w), s) for m, w, s in zip(mods, weights, scalings) if name in m]
            if method == "cat":
                merged_a, merged_b = _cat(present, rank)
            elif method in _SVD_FAMILY:
                merged_a, merged_b = _svd(method, present, rank, density, majority_sign_method)
            else:
                merged_a, merged_b = _factors(method, present, density, majority_sign_method)
            out[f"{name}.lora_A.weight"], out[f"{name}.lora_B.weight"] = merged_a, merged_b
        return out

    if seed is None:
        tensors = run()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            tensors = run()
    return LoraTensors(_merged_config(adapters, rank), tensors)
