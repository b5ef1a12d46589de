"""Where a model's FFN neurons are: Llama/Mistral/Qwen-style gated MLPs (gate_proj, up_proj, down_proj).

Neuron i of layer l is row i of gate_proj and up_proj and column i of down_proj; its activation is
act(gate(x))_i * up(x)_i, the input of down_proj.
"""

from __future__ import annotations

from dataclasses import dataclass

from bricks.errors import BrickworkError

__all__ = ["FfnLayout", "FfnLayoutError", "ffn_layout"]

_EXPECTED = "model.layers[i].mlp with gate_proj, up_proj, down_proj (nn.Linear) and act_fn"


class FfnLayoutError(BrickworkError):
    """The model's FFN is not laid out the way emergent bricks need."""


@dataclass(frozen=True)
class FfnLayout:
    """The gated MLP of every decoder layer, and the intermediate (neuron) size."""

    mlps: tuple  # one module per layer, each with gate_proj, up_proj, down_proj, act_fn
    intermediate_size: int

    @property
    def num_layers(self) -> int:
        return len(self.mlps)

    def hook_neuron_inputs(self, make_pre) -> list:
        """Register `make_pre(layer)` as a forward pre-hook on every layer's down_proj (the plain Linear inside a
        PEFT wrapper), where it sees the neurons' activations act(gate(x)) * up(x) [B, T, I]; returns the handles."""
        return [getattr(mlp.down_proj, "base_layer", mlp.down_proj).register_forward_pre_hook(make_pre(i))
                for i, mlp in enumerate(self.mlps)]


def _base(model):
    for _ in range(4):  # PeftModel -> LoraModel -> XForCausalLM -> XModel
        if hasattr(model, "layers"):
            return model
        inner = getattr(model, "model", None) or getattr(model, "base_model", None)
        if inner is None or inner is model:
            break
        model = inner
    return model


def ffn_layout(model) -> FfnLayout:
    """The FFN layout of `model` (also inside a PeftModel); an FfnLayoutError naming the module otherwise."""
    import torch.nn as nn

    body = _base(model)
    layers = getattr(body, "layers", None)
    if layers is None:
        raise FfnLayoutError(f"{type(model).__name__}: no decoder layers found; expected {_EXPECTED}")
    mlps, size = [], None
    for i, layer in enumerate(layers):
        mlp = getattr(layer, "mlp", None)
        parts = [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        base = [getattr(p, "base_layer", p) for p in parts]  # PEFT wraps projections in LoRA layers
        if mlp is None or not all(isinstance(p, nn.Linear) for p in base) or not hasattr(mlp, "act_fn"):
            found = type(mlp).__name__ if mlp is not None else "no mlp"
            raise FfnLayoutError(f"layers.{i}.mlp ({found}) is not a gated FFN; expected {_EXPECTED}")
        n = base[0].out_features
        if base[1].out_features != n or base[2].in_features != n or (size is not None and n != size):
            raise FfnLayoutError(f"layers.{i}.mlp: gate/up/down disagree on the intermediate size "
                                 f"({base[0].out_features}, {base[1].out_features}, {base[2].in_features})")
        size = n
        mlps.append(mlp)
    return FfnLayout(tuple(mlps), int(size or 0))
