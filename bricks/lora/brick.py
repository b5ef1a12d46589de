"""A LoRA brick: PEFT's `adapter_config.json` + `adapter_model.safetensors`, checked against a base model."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from bricks.errors import IncompatibleBrickError, IntegrityError, ManifestError, UnsafeArtifactError
from bricks.manifest import PICKLE_SUFFIXES, BrickManifest

__all__ = ["LoraBrickConfig", "LoraBrick", "ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "TENSOR_PATTERN"]

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# group 2: the module's path inside decoder layer N (self_attn.q_proj, mlp.c_proj); GPT-2 calls its layers h.N
_TENSOR = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)\.((?:[A-Za-z0-9_]+\.)*?[A-Za-z0-9_]+)\.lora_([AB])\.weight$")
TENSOR_PATTERN = "...layers.N.<module>.lora_A.weight / lora_B.weight"  # what every adapter tensor must look like


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
    """(in, out) features of each projection of the model's decoder layer, from its family's entry in
    bricks.families (UnsupportedFamilyError, an IncompatibleBrickError, for a family with none); {} without cfg."""
    from bricks.families import module_dims

    return module_dims(cfg) if cfg is not None else {}


def _module_of(dims, path: str) -> str | None:
    """The key of `dims` that the module at `path` (inside a decoder layer) is: its name, or parent.name where
    `dims` qualifies an ambiguous name (GPT-2's attn.c_proj / mlp.c_proj); None if none."""
    parts = path.split(".")
    return next((k for k in (".".join(parts[-n:]) for n in range(1, len(parts) + 1)) if k in dims), None)


def _names(dims) -> set[str]:
    """Every name a target module may use for a module of `dims` (qualified or not)."""
    return set(dims) | {k.rsplit(".", 1)[-1] for k in dims}


def _pattern_matches(pattern: str, names: list[str]) -> bool:
    """Whether PEFT's regex `target_modules` matches the module of any of the tensor `names`."""
    try:
        return any(re.fullmatch(pattern, n.rsplit(".lora_", 1)[0]) or re.search(pattern, n) for n in names)
    except re.error:
        return False


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
        """Each tensor's shape, from the safetensors header (no tensor is read)."""
        from safetensors import safe_open

        try:
            with safe_open(str(self.folder / ADAPTER_WEIGHTS), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:  # safetensors raises its own SafetensorError (and OSError) for unreadable files
            raise IntegrityError(f"LoRA brick {self.manifest.key}: {ADAPTER_WEIGHTS} cannot be read "
                                 f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None

    def _targets(self) -> list[str]:
        t = self.config.target_modules
        return [t] if isinstance(t, str) else list(t)

    def name_problems(self, model_config=None) -> tuple[list[str], list[str]]:
        """(tensors that match a module of the model, one line per name that does not).

        With `model_config` (a transformers config of a family in bricks.families) the modules are the model's
        projections and its layer count; without one, every tensor must match the LoRA layer pattern
        (`TENSOR_PATTERN`) and every target module must be a module found in those tensor names.
        """
        dims = _module_dims(model_config)
        layers = getattr(model_config, "num_hidden_layers", None)
        matched, problems, found = [], [], set()
        for name in sorted(self.tensor_shapes()):
            m = _TENSOR.search(name)
            if not m:
                problems.append(f"tensor {name!r} matches no LoRA layer (expected {TENSOR_PATTERN})")
                continue
            layer, path = int(m.group(1)), m.group(2)
            module = _module_of(dims, path) or path.rsplit(".", 1)[-1]
            if dims and module not in dims:
                problems.append(f"tensor {name!r}: module {module!r} is not in the model (has {', '.join(dims)})")
            elif layers is not None and layer >= layers:
                problems.append(f"tensor {name!r}: layer {layer} but the model has {layers}")
            else:
                matched.append(name)
                found |= _names({module: None})
        known = _names(dims) or found
        for target in self._targets():
            if target.startswith("(") or any(c in target for c in "*?[]|\\"):
                if not _pattern_matches(target, matched):
                    problems.append(f"target modules pattern {target!r} matches no tensor")
            elif target not in known:
                problems.append(f"target module {target!r} matches no module of the "
                                f"{'model' if dims else 'adapter'} (has {', '.join(sorted(known)) or 'none'})")
            elif target not in found:
                problems.append(f"target module {target!r} has no tensors in {ADAPTER_WEIGHTS}")
        return matched, problems

    def check_names(self, model_config=None, *, force: bool = False) -> None:
        """Refuse (IncompatibleBrickError) an adapter whose tensors match no module of the model, listing them,
        or one that matches only partly unless `force` (then the mismatches are logged as a warning)."""
        matched, problems = self.name_problems(model_config)
        if not matched:
            names = sorted(self.tensor_shapes())
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            raise IncompatibleBrickError(f"LoRA brick {self.manifest.key}: no tensor matches a module of the "
                                         f"model ({shown or 'no tensors'}; expected {TENSOR_PATTERN})")
        if problems:
            shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
            if not force:
                raise IncompatibleBrickError(f"LoRA brick {self.manifest.key} matches the model only partly: "
                                             f"{shown} (force to add it anyway)")
            log.warning("LoRA brick %s matches the model only partly (forced): %s", self.manifest.key, shown)

    def check_fits(self, model_config) -> None:
        """Raise one IncompatibleBrickError listing every tensor name, target module or shape that does not fit."""
        problems: list[str] = []
        dims = _module_dims(model_config)
        if dims:
            problems += [f"target module {t!r} not in the model" for t in self._targets()
                         if t not in _names(dims) and not t.startswith("(")]
        for name, shape in self.tensor_shapes().items():
            m = _TENSOR.search(name)
            if not m:
                problems.append(f"tensor {name!r} matches no LoRA layer (expected {TENSOR_PATTERN})")
                continue
            layer, path, ab = int(m.group(1)), m.group(2), m.group(3)
            module = _module_of(dims, path) or path.rsplit(".", 1)[-1]
            if layer >= model_config.num_hidden_layers:
                problems.append(f"{name}: layer {layer} but the model has {model_config.num_hidden_layers}")
            if dims and module not in dims:
                problems.append(f"tensor {name!r}: module {module!r} is not in the model")
            if module in dims and len(shape) == 2:
                fan_in, fan_out = dims[module]
                want = (self.config.r, fan_in) if ab == "A" else (fan_out, self.config.r)
                if shape != want:
                    problems.append(f"{name}: shape {list(shape)}, expected {list(want)}")
        if problems:
            shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
            raise IncompatibleBrickError(f"LoRA brick {self.manifest.key} does not fit the base model: {shown}")
