"""Where a model's FFN neurons are, read from its family's description (bricks.families), not guessed from names.

Neuron i of layer l is row i of gate and up (rows i and I + i of a fused gate_up; column i of a GPT-2 Conv1D)
and column i of down; its activation (act(gate(x)) * up(x), or act(up(x)) without a gate) is the input of down.
A model whose config.model_type has no entry is matched against every described layout; a model that fits none,
or a mixture of experts, gets one FfnLayoutError naming the layout found and the ones expected.
"""

from __future__ import annotations

from dataclasses import dataclass

from bricks.errors import BrickworkError
from bricks.families import FAMILIES, Family, model_type_of

__all__ = ["FfnLayout", "FfnLayoutError", "ffn_layout"]


class FfnLayoutError(BrickworkError):
    """The model's FFN is not laid out the way emergent bricks need."""


def _plain(holder):
    return getattr(holder, "base_layer", holder)  # the plain Linear inside a PEFT LoRA wrapper


def _is_conv1d(module) -> bool:
    return type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None


def _in_out(module, conv1d: bool) -> tuple[int, int]:
    w = module.weight  # nn.Linear: [out, in]; Conv1D: [in, out]
    return (int(w.shape[0]), int(w.shape[1])) if conv1d else (int(w.shape[1]), int(w.shape[0]))


@dataclass(frozen=True)
class FfnLayout:
    """The FFN of every decoder layer, its neuron count and its family's description."""

    mlps: tuple  # one FFN module per layer
    intermediate_size: int
    family: Family = FAMILIES["llama"]
    model_type: str | None = None

    @property
    def num_layers(self) -> int:
        return len(self.mlps)

    def projections(self) -> tuple[str, ...]:
        """Names of the projections that carry the neurons, within each FFN module (down last)."""
        f = self.family
        return (f.gate, f.up, f.down) if f.ffn == "gated" else (f.up, f.down)

    def down(self, layer: int):
        """The module whose input is the neurons' activations [B, T, I] (a PEFT LoRA wrapper, if any)."""
        return getattr(self.mlps[layer], self.family.down)

    def hook_neuron_inputs(self, make_pre) -> list:
        """Register `make_pre(layer)` as a forward pre-hook on every layer's down projection (the plain module
        inside a PEFT wrapper), where it sees the neurons' activations [B, T, I]; returns the handles."""
        return [_plain(self.down(i)).register_forward_pre_hook(make_pre(i)) for i in range(self.num_layers)]

    def down_norms(self):
        """[L, I] the norm of what each neuron writes: its column of down (its row of a Conv1D); on the CPU."""
        import torch

        dim = 1 if self.family.conv1d else 0
        return torch.stack([_plain(self.down(i)).weight.detach().float().norm(dim=dim).cpu()
                            for i in range(self.num_layers)])

    def shrunk(self, layer: int, idx) -> dict:
        """{projection name: a new module with only the neurons `idx` [K]} for layer `layer` (plain modules, the
        weights copied onto the same device and dtype)."""
        import torch

        f, size = self.family, self.intermediate_size
        mlp = self.mlps[layer]
        rows = torch.cat([idx, idx + size]) if f.ffn == "fused" else idx  # fused gate_up: gate rows, then up rows
        out = {}
        with torch.no_grad():
            for name in self.projections():
                big = _plain(getattr(mlp, name))
                out[name] = _take(big, in_idx=idx, conv1d=f.conv1d) if name == f.down else \
                    _take(big, out_idx=rows if name == f.up else idx, conv1d=f.conv1d)
        return out


def _take(big, *, out_idx=None, in_idx=None, conv1d: bool = False):
    """A copy of the Linear (or Conv1D) `big` with only the outputs `out_idx` or the inputs `in_idx`."""
    import torch.nn as nn

    w = big.weight.t() if conv1d else big.weight  # [out, in]
    if out_idx is not None:
        w = w[out_idx]
    if in_idx is not None:
        w = w[:, in_idx]
    bias = big.bias if big.bias is None or out_idx is None else big.bias[out_idx]
    n_out, n_in = w.shape
    if conv1d:
        small = type(big)(n_out, n_in).to(device=big.weight.device, dtype=big.weight.dtype)
        small.weight.copy_(w.t())
    else:
        small = nn.Linear(n_in, n_out, bias=bias is not None, dtype=big.weight.dtype, device=big.weight.device)
        small.weight.copy_(w)
    if bias is not None:
        small.bias.copy_(bias)
    return small


def _layers(model, name: str):
    import torch.nn as nn

    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and path.rsplit(".", 1)[-1] == name and len(module):
            return module
    return None


def _found(mlp) -> str:
    """What a layer's FFN module is, in one phrase: its class and direct children."""
    if mlp is None:
        return "no FFN module"
    kids = ", ".join(f"{n}: {type(_plain(c)).__name__}" for n, c in mlp.named_children())
    return f"{type(mlp).__name__}{f' with {kids}' if kids else ''}"


def _problem(family: Family, layer, i: int) -> str | None:
    """Why decoder layer `layer` does not have `family`'s dense FFN, or None."""
    import torch.nn as nn

    where = f"{family.layers}.{i}.{family.mlp}"
    mlp = getattr(layer, family.mlp, None)
    if family.ffn == "moe":
        return (f"{where} ({_found(mlp)}) is a mixture of experts, which FFN-neuron bricks do not support "
                "(expert_mask bricks do)")
    names = (family.gate, family.up, family.down) if family.ffn == "gated" else (family.up, family.down)
    parts = [_plain(getattr(mlp, n, None)) for n in names]
    kind = (lambda p: _is_conv1d(p)) if family.conv1d else (lambda p: isinstance(p, nn.Linear))
    if mlp is None or not all(kind(p) for p in parts) or not hasattr(mlp, family.act):
        return f"{where} ({_found(mlp)}) is not a {family.ffn} FFN"
    sizes = [_in_out(p, family.conv1d) for p in parts]
    outs = [o for _, o in sizes[:-1]]
    if family.ffn == "fused":
        outs = [outs[0] // 2] if outs[0] % 2 == 0 else [-1]
    if any(o != sizes[-1][0] for o in outs):
        return f"{where}: {', '.join(names)} disagree on the intermediate size ({sizes})"
    return None


def _expected() -> str:
    seen = []
    for fam in FAMILIES.values():
        if fam.ffn != "moe" and fam.describe() not in seen:
            seen.append(fam.describe())
    return "; ".join(seen)


def _layout(model, model_type, family: Family) -> FfnLayout | str:
    layers = _layers(model, family.layers)
    if layers is None:
        return f"no decoder layers ({family.layers}) found"
    for i, layer in enumerate(layers):
        problem = _problem(family, layer, i)
        if problem:
            return problem
    mlp = getattr(layers[0], family.mlp)
    size = _in_out(_plain(getattr(mlp, family.down)), family.conv1d)[0]
    return FfnLayout(tuple(getattr(layer, family.mlp) for layer in layers), size, family, model_type)


def ffn_layout(model) -> FfnLayout:
    """The FFN layout of `model` (also inside a PeftModel); one FfnLayoutError naming what was found otherwise."""
    cfg = getattr(model, "config", None)
    model_type = model_type_of(cfg) if cfg is not None else None
    family = FAMILIES.get(model_type or "")
    if family is not None:
        found = _layout(model, model_type, family)
        if isinstance(found, FfnLayout):
            return found
        raise FfnLayoutError(f"{model_type}: {found}; expected {family.describe()}"
                             + ("" if family.ffn != "moe" else f" (supported FFN layouts: {_expected()})"))
    tried = {}
    for fam in dict.fromkeys(f for f in FAMILIES.values() if f.ffn != "moe"):  # unknown: try every description
        found = _layout(model, model_type, fam)
        if isinstance(found, FfnLayout):
            return found
        tried[fam.layers] = tried.get(fam.layers) or found
    name = type(model).__name__ + (f" (model type {model_type!r})" if model_type else "")
    if all(t.startswith("no decoder layers") for t in tried.values()):
        raise FfnLayoutError(f"{name}: no decoder layers found; expected model.layers or transformer.h, each "
                             f"with one of these FFN layouts: {_expected()}")
    shown = next(t for t in tried.values() if not t.startswith("no decoder layers"))
    raise FfnLayoutError(f"{name}: {shown}; expected one of: {_expected()}")
