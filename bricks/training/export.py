"""Write a trained LoRA adapter as a brick folder: PEFT files + `brick.json`, atomically."""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from bricks.atomic import staged_folder
from bricks.manifest import BaseModelRef, BrickManifest, file_entry

__all__ = ["save_adapter", "write_lora_brick"]


def save_adapter(peft_model, folder: Path, adapter_name: str = "default") -> None:
    """Write one adapter's `adapter_config.json` + `adapter_model.safetensors` straight into `folder`."""
    folder = Path(folder)
    peft_model.save_pretrained(str(folder), selected_adapters=[adapter_name], safe_serialization=True)
    sub = folder / adapter_name
    if adapter_name != "default" and sub.is_dir():  # PEFT nests non-default adapters in a subfolder
        for f in sub.iterdir():
            os.replace(f, folder / f.name)
        sub.rmdir()
    (folder / "README.md").unlink(missing_ok=True)


def write_lora_brick(peft_model, folder: Path, *, brick_id: str, description: str, examples: Sequence[str],
                     base_model: BaseModelRef, metrics: Mapping[str, float], version: int = 1,
                     prompt_template: str | None = None, skills: Sequence[str] = (),
                     adapter_name: str = "default", extra: Mapping[str, object] | None = None) -> Path:
    """Save `peft_model`'s adapter and its manifest into `folder` (which must not exist yet)."""
    folder = Path(folder)
    with staged_folder(folder) as tmp:
        save_adapter(peft_model, tmp, adapter_name)
        files = [file_entry(tmp, name) for name in ("adapter_config.json", "adapter_model.safetensors")]
        manifest = BrickManifest(
            id=brick_id, version=version, kind="lora", description=description, examples=list(examples),
            base_model=base_model, files=files, metrics=dict(metrics),
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            prompt_template=prompt_template, skills=list(skills), **dict(extra or {}),
        )
        manifest.save(tmp / "brick.json")
    return folder
