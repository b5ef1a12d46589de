"""Default LoRA targets of a model: its family's (bricks/families.py), else the linear layers of its repeated blocks."""

from __future__ import annotations

import logging

from bricks.errors import IncompatibleBrickError

__all__ = ["lora_target_modules"]

log = logging.getLogger(__name__)


def lora_target_modules(model) -> tuple[str, ...]:
    """The default LoRA target modules of `model`: its family's (`bricks.families.lora_targets`: attention
    projections and dense FFN linears, e.g. Phi-3's qkv_proj, o_proj, gate_up_proj, down_proj; a mixture of
    experts' attention projections) when the family is known and the model has every one of them; otherwise the
    names of the linear layers inside the model's repeated blocks, in model order (embeddings, lm_head left alone).
    """
    from bricks.families import FAMILIES, lora_targets, model_type_of

    config = getattr(model, "config", None)
    model_type = model_type_of(config) if config is not None else None
    if model_type in FAMILIES:
        targets = lora_targets(config)
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [t for t in targets if t not in present]
        if not missing:
            return targets
        log.warning("model type %s lacks the family's LoRA targets %s; using the linear layers found instead",
                    model_type, ", ".join(missing))
    return _scanned_targets(model)


def _scanned_targets(model) -> tuple[str, ...]:
    """The names of the linear layers (and GPT-2 Conv1D) inside the model's repeated blocks, in model order."""
    import torch

    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover (old transformers)
        Conv1D = torch.nn.Linear
    names: list[str] = []
    for qualified, module in model.named_modules():
        parts = qualified.split(".")
        if isinstance(module, (torch.nn.Linear, Conv1D)) and any(p.isdigit() for p in parts[:-1]):
            if parts[-1] not in names:
                names.append(parts[-1])
    if not names:
        raise IncompatibleBrickError(f"model {type(model).__name__} has no linear layers inside repeated blocks "
                                     "to train LoRA on; give target modules explicitly")
    return tuple(names)
