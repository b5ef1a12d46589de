"""The model families brickwork knows, described once: where a decoder layer's FFN neurons and LoRA modules are.

One `Family` entry per transformers `config.model_type` says how the FFN of every decoder layer
(`<layers>[i].<mlp>`) is built, and which attention projections a layer has:

- `gated`: act(gate(x)) * up(x) -> down (Llama, Mistral, Qwen2/3, Gemma, OLMo2). Neuron i is row i of gate and
  up and column i of down.
- `fused`: one gate_up projection, the first half of its output rows gate and the second half up (Phi-3):
  neuron i is rows i and I + i of gate_up and column i of down.
- `plain`: act(up(x)) -> down, no gate (GPT-NeoX; GPT-2 with Conv1D, whose weights are stored transposed [in, out]).
- `moe`: a mixture of experts (Mixtral, Qwen2/3-MoE): FFN-neuron bricks refuse it (one clear error); its emergent
  bricks are expert subsets instead (`expert_mask`, bricks/expert_mask/: each MoE layer's router takes its top-k
  among the kept experts; the expert count, top-k and MoE layers are read from the config).

In every dense case a neuron's activation is the input of down. Adding a family is one entry in FAMILIES.

LoRA training's default targets come from the same entry (`lora_targets`): every attention projection and dense
FFN linear of a decoder layer, by the name PEFT matches. A mixture of experts' routed experts are fused 3-D weights
(transformers 5), which PEFT reaches through `target_parameters` (`lora_expert_parameters`), not by module name.
"""

from __future__ import annotations

from dataclasses import dataclass

from bricks.errors import IncompatibleBrickError

__all__ = ["Family", "FAMILIES", "UnsupportedFamilyError", "family_for", "model_type_of", "module_dims",
           "intermediate_size", "supported", "lora_targets", "lora_expert_parameters"]

KINDS = ("gated", "fused", "plain", "moe")
ATTENTION = ("qkvo", "qkv", "neox", "gpt2")  # q/k/v/o_proj; Phi-3's fused qkv_proj; GPT-NeoX; GPT-2 (see _ATTENTION)


class UnsupportedFamilyError(IncompatibleBrickError):
    """A model whose family (config.model_type) has no entry in FAMILIES."""


@dataclass(frozen=True)
class Family:
    """How one family's decoder layer is laid out (names relative to the layer)."""

    ffn: str  # one of KINDS
    up: str | None = None  # up projection (plain), the fused gate_up (fused); None for moe
    down: str | None = None
    gate: str | None = None  # gated only
    act: str = "act_fn"
    mlp: str = "mlp"  # the FFN module of a layer
    layers: str = "layers"  # name of the ModuleList of decoder layers
    attention: str = "qkvo"  # one of ATTENTION
    conv1d: bool = False  # GPT-2's Conv1D: weight [in, out] instead of nn.Linear's [out, in]
    size: str = "intermediate_size"  # the config field of the neuron count (unset: 4 x hidden_size)
    experts: tuple[str, ...] = ()  # moe: the routed experts' fused weights, relative to mlp (PEFT target_parameters)

    def __post_init__(self):
        if self.ffn not in KINDS or self.attention not in ATTENTION:
            raise ValueError(f"bad Family entry: ffn {self.ffn!r} (one of {KINDS}), attention {self.attention!r} "
                             f"(one of {ATTENTION})")
        if self.ffn != "moe" and not (self.up and self.down and (self.gate or self.ffn != "gated")):
            raise ValueError(f"bad Family entry: a {self.ffn} FFN needs up, down{' and gate' * (self.ffn == 'gated')}")

    def describe(self) -> str:
        """The layout in one phrase, for error messages."""
        m, where = self.mlp, f"{self.layers}[i]"
        if self.ffn == "gated":
            body = f"{m}.{self.gate}, {m}.{self.up}, {m}.{self.down} and {m}.{self.act}"
        elif self.ffn == "fused":
            body = f"{m}.{self.up} (gate rows, then up rows), {m}.{self.down} and {m}.{self.act}"
        elif self.ffn == "plain":
            body = f"{m}.{self.up}, {m}.{self.down}{' (Conv1D)' if self.conv1d else ''} and {m}.{self.act}"
        else:
            return f"{where}.{m} with experts (mixture of experts)"
        return f"{where} with {body}"


_GATED = dict(ffn="gated", gate="gate_proj", up="up_proj", down="down_proj")
_EXPERTS = ("experts.gate_up_proj", "experts.down_proj")  # transformers 5: [experts, out, in] parameters
FAMILIES: dict[str, Family] = {
    "llama": Family(**_GATED),
    "mistral": Family(**_GATED),
    "qwen2": Family(**_GATED),
    "qwen3": Family(**_GATED),
    "gemma": Family(**_GATED),
    "gemma2": Family(**_GATED),
    "gemma3_text": Family(**_GATED),
    "olmo": Family(**_GATED),
    "olmo2": Family(**_GATED),
    "granite": Family(**_GATED),
    "phi3": Family("fused", up="gate_up_proj", down="down_proj", act="activation_fn", attention="qkv"),
    "gpt_neox": Family("plain", up="dense_h_to_4h", down="dense_4h_to_h", act="act", attention="neox"),
    "gpt2": Family("plain", up="c_fc", down="c_proj", act="act", layers="h", attention="gpt2", conv1d=True,
                   size="n_inner"),
    "mixtral": Family("moe", experts=_EXPERTS),
    "qwen2_moe": Family("moe", experts=_EXPERTS),
    "qwen3_moe": Family("moe", experts=_EXPERTS),
}


def _heads(cfg) -> tuple[int, int, int, int]:
    h, n = cfg.hidden_size, cfg.num_attention_heads
    return h, n, getattr(cfg, "num_key_value_heads", None) or n, getattr(cfg, "head_dim", None) or h // n


def _qkvo(cfg):
    h, n, kv, d = _heads(cfg)
    return "self_attn", {"q_proj": (h, n * d), "k_proj": (h, kv * d), "v_proj": (h, kv * d), "o_proj": (n * d, h)}


def _qkv(cfg):
    h, n, kv, d = _heads(cfg)
    return "self_attn", {"qkv_proj": (h, (n + 2 * kv) * d), "o_proj": (n * d, h)}


def _neox(cfg):
    return "attention", {"query_key_value": (cfg.hidden_size, 3 * cfg.hidden_size),
                         "dense": (cfg.hidden_size, cfg.hidden_size)}


def _gpt2(cfg):
    return "attn", {"c_attn": (cfg.hidden_size, 3 * cfg.hidden_size), "c_proj": (cfg.hidden_size, cfg.hidden_size)}


_ATTENTION = {"qkvo": _qkvo, "qkv": _qkv, "neox": _neox, "gpt2": _gpt2}


def supported() -> str:
    return ", ".join(sorted(FAMILIES))


def model_type_of(cfg) -> str | None:
    """config.model_type, from the text config of a multimodal config if it has one."""
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return getattr(text, "model_type", None) or getattr(cfg, "model_type", None)


def family_for(cfg_or_type) -> tuple[str, Family]:
    """(model_type, its Family), for a transformers config or a model_type; UnsupportedFamilyError otherwise."""
    model_type = cfg_or_type if isinstance(cfg_or_type, str) or cfg_or_type is None else model_type_of(cfg_or_type)
    family = FAMILIES.get(model_type or "")
    if family is None:
        raise UnsupportedFamilyError(f"model type {model_type!r} is not a family brickwork knows (known: "
                                     f"{supported()}; a new one is one entry in bricks/families.py FAMILIES)")
    return model_type, family


def intermediate_size(cfg) -> int:
    """The FFN's neuron count per layer (per expert for MoE): the family's config field (intermediate_size,
    GPT-2's n_inner), or 4 x hidden_size where it is unset."""
    family = FAMILIES.get(model_type_of(cfg) or "")
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(getattr(cfg, family.size if family else "intermediate_size", None) or 4 * cfg.hidden_size)


def module_dims(cfg) -> dict[str, tuple[int, int]]:
    """(in, out) features of each LoRA-targetable projection of one decoder layer of the model `cfg` describes.

    Keys are module names (q_proj, gate_up_proj, c_attn...); a name found both in attention and in the FFN
    (GPT-2's c_proj) is keyed by parent and name instead ("attn.c_proj", "mlp.c_proj").
    """
    _, family = family_for(cfg)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    parent, attn = _ATTENTION[family.attention](cfg)
    h, i = cfg.hidden_size, intermediate_size(cfg)
    if family.ffn == "gated":
        ffn = {family.gate: (h, i), family.up: (h, i), family.down: (i, h)}
    elif family.ffn == "fused":
        ffn = {family.up: (h, 2 * i), family.down: (i, h)}
    elif family.ffn == "plain":
        ffn = {family.up: (h, i), family.down: (i, h)}
    else:
        ffn = {}  # experts are not nn.Linear modules LoRA targets by name
    both = set(attn) & set(ffn)
    return {**{(f"{parent}.{k}" if k in both else k): v for k, v in attn.items()},
            **{(f"{family.mlp}.{k}" if k in both else k): v for k, v in ffn.items()}}


def lora_targets(cfg) -> tuple[str, ...]:
    """The family's default LoRA `target_modules`: each attention projection and dense FFN linear of a decoder
    layer by its own name (what PEFT matches), attention first, in layer order (Llama: q/k/v/o_proj,
    gate/up/down_proj; Phi-3: qkv_proj, o_proj, gate_up_proj, down_proj; GPT-2: c_attn, c_proj, c_fc; a mixture
    of experts: its attention projections). UnsupportedFamilyError for a family with no entry."""
    return tuple(dict.fromkeys(k.rsplit(".", 1)[-1] for k in module_dims(cfg)))


def lora_expert_parameters(cfg) -> tuple[str, ...]:
    """A mixture of experts' routed-expert weights as PEFT `target_parameters` ("mlp.experts.gate_up_proj",
    "mlp.experts.down_proj"); () for a dense family. UnsupportedFamilyError for a family with no entry."""
    _, family = family_for(cfg)
    return tuple(f"{family.mlp}.{name}" for name in family.experts)
