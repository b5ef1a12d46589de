"""Where each decoder layer's FFN is in vLLM's model code, for the per-request FFN masks (runs in the workers).

vLLM's own model classes and its Transformers modeling backend (which fuses a GLU's gate and up projections into
one `gate_up_proj`) give a dense decoder layer one of the `LAYOUTS` below. The masks are a pre-hook on the down
projection's input (the neurons' activations), which fits every layout; compact FFN matrices need the gated
layout's fused gate/up rows, so non-gated layouts run masked only. A model with none of them (a mixture of experts,
a family vLLM lays out otherwise) is named in one line with what its layer 0 holds and the layouts expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bricks.errors import ConfigError

__all__ = ["LAYOUTS", "MlpLayout", "find_mlps", "layout_problem"]

_LAYER = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)$")  # model.layers.N (most), transformer.h.N (GPT-2)


@dataclass(frozen=True)
class MlpLayout:
    """A decoder layer's `mlp` with an up projection into the neurons and a down projection out of them."""

    name: str
    up: str  # gated: the fused gate/up projection (gate rows, then up rows)
    down: str
    gated: bool

    def describe(self) -> str:
        kind = "gated, fused gate/up" if self.gated else "non-gated"
        return f"mlp.{self.up} + mlp.{self.down} ({kind})"


LAYOUTS = (
    MlpLayout("gated", "gate_up_proj", "down_proj", True),  # Llama, Mistral, Qwen2/3, Gemma2/3, Phi-3, OLMo2
    MlpLayout("gpt_neox", "dense_h_to_4h", "dense_4h_to_h", False),  # GPT-NeoX (Transformers backend)
    MlpLayout("gpt2", "c_fc", "c_proj", False),  # GPT-2 (transformer.h.N.mlp)
)
EXPECTED = "layers.N.mlp with " + " or ".join(layout.describe() for layout in LAYOUTS)


def _decoder_layers(model) -> dict:
    """{index: decoder layer module} of the model's (first) stack of numbered layers."""
    layers: dict[int, object] = {}
    for name, module in model.named_modules():
        m = _LAYER.search(name)
        if m and int(m.group(1)) not in layers:
            layers[int(m.group(1))] = module
    return layers


def _children(module) -> str:
    return ", ".join(name for name, _ in module.named_children()) or "no submodules"


def layout_problem(model, layers: dict) -> str:
    """One line naming the model class, what its decoder layer 0 holds, and the layouts expected."""
    first = layers.get(0)
    if first is None:
        found = "no numbered decoder layers (layers.N or h.N)"
    elif getattr(first, "mlp", None) is not None:
        found = f"layer 0 holds {_children(first)}; its mlp ({type(first.mlp).__name__}) holds {_children(first.mlp)}"
    else:
        found = f"layer 0 ({type(first).__name__}) holds {_children(first)}"
    return f"vLLM model {type(model).__name__}: no FFN layout brickwork can mask: {found}; expected {EXPECTED}"


def find_mlps(model, num_layers: int) -> tuple[MlpLayout, dict]:
    """(the layout, {layer: its MLP module}) of every decoder layer; ConfigError in one line when none fits."""
    layers = _decoder_layers(model)
    for layout in LAYOUTS:
        mlps = {i: layer.mlp for i, layer in layers.items()
                if hasattr(getattr(layer, "mlp", None), layout.up) and hasattr(layer.mlp, layout.down)}
        if not mlps:
            continue
        if sorted(mlps) != list(range(num_layers)):
            raise ConfigError(f"vLLM model {type(model).__name__}: found FFN ({layout.describe()}) in layers "
                              f"{sorted(mlps)}, expected layers 0..{num_layers - 1}")
        return layout, mlps
    raise ConfigError(layout_problem(model, layers))
