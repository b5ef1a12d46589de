"""A LoRA brick: PEFT's `adapter_config.json` + `adapter_model.safetensors`, checked against a base model."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from bricks.errors import IncompatibleBrickError, ManifestError, UnsafeArtifactError
from bricks.manifest import PICKLE_SUFFIXES, BrickManifest

__all__ = ["LoraBrickConfig", "LoraBrick", "ADAPTER_CONFIG", "ADAPTER_WEIGHTS"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_TENSOR = re.compile(r"layers\.(\d+)\.(?:[a-z_]+\.)*?([a-z_]+_proj)\.lora_([AB])\.weight$")


class LoraBrickConfig(BaseModel):
    """The parts of PEFT's LoraConfig brickwork relies on; other keys are kept as they are."""

    model_config = ConfigDict(frozen=True, extra="allow")

    r: int
    lora_alpha: float
    target_modules: list[str] | str
    base_model_name_or_path: str | None = None
    peft_type: str = "LORA"

    @classmethod
    def from_dir(cls, folder: Path) -> "LoraBrickConfig":
        path = Path(folder) / ADAPTER_CONFIG
        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise ManifestError(f"LoRA brick {str(folder)!r} has no {ADAPTER_CONFIG}") from None
        except (ValueError, ValidationError) as e:
            raise ManifestError(f"{path}: invalid adapter config ({str(e).splitlines()[0]})") from None


def _module_dims(cfg) -> dict[str, tuple[int, int]]:
    """(in, out) features of each projection of a Llama/Mistral/Qwen-style decoder layer."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    h, i = cfg.hidden_size, cfg.intermediate_size
    return {"q_proj": (h, cfg.num_attention_heads * head_dim), "k_proj": (h, kv * head_dim),
            "v_proj": (h, kv * head_dim), "o_proj": (cfg.num_attention_heads * head_dim, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


@dataclass(frozen=True)
class LoraBrick:
    """A validated LoRA brick folder."""

    folder: Path
    manifest: BrickManifest
    config: LoraBrickConfig

    @classmethod
    def from_dir(cls, folder: Path, manifest: BrickManifest) -> "LoraBrick":
        folder = Path(folder)
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise UnsafeArtifactError(f"LoRA brick {manifest.id!r} has pickle files {pickles}; safetensors only")
        if not (folder / ADAPTER_WEIGHTS).is_file():
            raise ManifestError(f"LoRA brick {manifest.id!r} has no {ADAPTER_WEIGHTS} in {str(folder)!r}")
        return cls(folder, manifest, LoraBrickConfig.from_dir(folder))

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        from safetensors import safe_open

        with safe_open(str(self.folder / ADAPTER_WEIGHTS), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}

    def check_fits(self, model_config) -> None:
        """Raise one IncompatibleBrickError listing every target module or shape that does not fit the model."""
        problems: list[str] = []
        dims = _module_dims(model_config) if hasattr(model_config, "intermediate_size") else {}
        targets = [self.config.target_modules] if isinstance(self.config.target_modules, str) else self.config.target_modules
        if dims:
            problems += [f"target module {t!r} not in the model" for t in targets if t not in dims and not t.startswith("(")]
        for name, shape in self.tensor_shapes().items():
            m = _TENSOR.search(name)
            if not m:
                continue
            layer, module, ab = int(m.group(1)), m.group(2), m.group(3)
            if layer >= model_config.num_hidden_layers:
                problems.append(f"{name}: layer {layer} but the model has {model_config.num_hidden_layers}")
            if module in dims and len(shape) == 2:
                fan_in, fan_out = dims[module]
                want = (self.config.r, fan_in) if ab == "A" else (fan_out, self.config.r)
                if shape != want:
                    problems.append(f"{name}: shape {list(shape)}, expected {list(want)}")
        if problems:
            shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
            raise IncompatibleBrickError(f"LoRA brick {self.manifest.key} does not fit the base model: {shown}")
