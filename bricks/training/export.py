"""Write a trained LoRA adapter as a brick folder: PEFT files + `brick.json`, atomically."""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from bricks.atomic import atomic_write_text, staged_folder
from bricks.manifest import BaseModelRef, BrickManifest, file_entry

__all__ = ["save_adapter", "write_lora_brick", "neutral_base_path"]


def save_adapter(peft_model, folder: Path, adapter_name: str = "default", base_model_name: str | None = None) -> None:
    """Write one adapter's `adapter_config.json` + `adapter_model.safetensors` straight into `folder`.

    PEFT records the base model's local folder in `base_model_name_or_path`; a shipped artifact must not carry a
    path of the machine it was built on, so an absolute path is replaced by `base_model_name` (default: the
    folder's last component).
    """
    folder = Path(folder)
    peft_model.save_pretrained(str(folder), selected_adapters=[adapter_name], safe_serialization=True)
    sub = folder / adapter_name
    if adapter_name != "default" and sub.is_dir():  # PEFT nests non-default adapters in a subfolder
        for f in sub.iterdir():
            os.replace(f, folder / f.name)
        sub.rmdir()
    (folder / "README.md").unlink(missing_ok=True)
    neutral_base_path(folder / "adapter_config.json", base_model_name)


def neutral_base_path(config_file: Path, base_model_name: str | None) -> None:
    """Replace an absolute `base_model_name_or_path` in a PEFT adapter config by a name."""
    if not config_file.is_file():
        return
    data = json.loads(config_file.read_text(encoding="utf-8"))
    value = data.get("base_model_name_or_path")
    if isinstance(value, str) and (Path(value).is_absolute() or value.startswith(("/", "~", "\\"))):
        data["base_model_name_or_path"] = base_model_name or Path(value).name
        atomic_write_text(config_file, json.dumps(data, indent=2, sort_keys=True))


def write_lora_brick(peft_model, folder: Path, *, brick_id: str, description: str, examples: Sequence[str],
                     base_model: BaseModelRef, metrics: Mapping[str, float], version: int = 1,
                     prompt_template: str | None = None, prompt_format: str | None = None,
                     skills: Sequence[str] = (),
                     adapter_name: str = "default", extra: Mapping[str, object] | None = None) -> Path:
    """Save `peft_model`'s adapter and its manifest into `folder` (which must not exist yet)."""
    folder = Path(folder)
    with staged_folder(folder) as tmp:
        save_adapter(peft_model, tmp, adapter_name, base_model_name=base_model.name)
        files = [file_entry(tmp, name) for name in ("adapter_config.json", "adapter_model.safetensors")]
        manifest = BrickManifest(
            id=brick_id, version=version, kind="lora", description=description, examples=list(examples),
            base_model=base_model, files=files, metrics=dict(metrics),
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            prompt_template=prompt_template, prompt_format=prompt_format, skills=list(skills), **dict(extra or {}),
        )
        manifest.save(tmp / "brick.json")
    return folder
