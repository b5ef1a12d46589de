"""Bringing your own adapters: a plain PEFT LoRA folder (`adapter_config.json` + `adapter_model.safetensors`, as
`PeftModel.save_pretrained` writes it) made into a brick of a library.

The adapter folder is never modified: its two files are copied into a staged brick folder (with a `brick.json`
holding their checksums and the library's base model), which `Library.add` / `Library.update` check against the
model (every tensor and target module a module of the model, shapes that fit: `bricks.integrity.check_adapter`)
and copy in under the library's lock. Pickle weights (`adapter_model.bin`) are refused, never loaded.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bricks.atomic import staged_folder
from bricks.errors import BrickError, IncompatibleBrickError, LibraryError, ManifestError, UnsafeArtifactError
from bricks.integrity import Brick, verify_brick_folder
from bricks.lora.brick import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoraBrickConfig
from bricks.manifest import MANIFEST_NAME, PICKLE_SUFFIXES, BaseModelRef, BrickManifest, file_entry

if TYPE_CHECKING:
    from bricks.library import Library

__all__ = ["brick_from_peft", "import_peft", "update_from_peft", "check_peft_folder", "read_examples",
           "model_config_for"]

log = logging.getLogger(__name__)

ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)


def check_peft_folder(adapter_dir: str | Path) -> LoraBrickConfig:
    """The adapter config of the PEFT LoRA folder `adapter_dir`; one-line errors for anything else.

    UnsafeArtifactError for pickle weights without safetensors ones (a pickle beside safetensors weights is
    left behind, never read); ManifestError for a missing file; IncompatibleBrickError for a non-LoRA adapter.
    """
    folder = Path(adapter_dir)
    if not folder.is_dir():
        raise ManifestError(f"adapter folder {str(folder)!r} {'is a file' if folder.exists() else 'does not exist'}"
                            f"; expected a PEFT folder ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS})")
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        if pickles:
            raise UnsafeArtifactError(f"adapter folder {str(folder)!r} holds pickle weights {pickles}; brickwork "
                                      f"imports safetensors only ({ADAPTER_WEIGHTS}: save_pretrained with "
                                      "safe_serialization=True)")
        raise ManifestError(f"adapter folder {str(folder)!r} has no {ADAPTER_WEIGHTS}; expected a PEFT LoRA "
                            f"folder ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS})")
    if pickles:
        log.warning("adapter folder %s: pickle files %s are not imported (safetensors only)", folder, pickles)
    config = LoraBrickConfig.from_dir(folder)
    if str(config.peft_type).upper() != "LORA":
        raise IncompatibleBrickError(f"adapter folder {str(folder)!r} holds a {config.peft_type} adapter; "
                                     "brickwork imports LoRA adapters only (peft_type LORA)")
    return config


def read_examples(path: str | Path) -> list[str]:
    """Example instructions from a file: one per line, or for `.jsonl` each row's `instruction` (or the row
    itself when it is a string). Blank lines are skipped; the order is kept and duplicates dropped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"examples file {str(path)!r} does not exist") from None
    except UnicodeDecodeError:
        raise ManifestError(f"examples file {str(path)!r} is not UTF-8 text") from None
    found: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except ValueError:
                raise ManifestError(f"{path}:{n}: not a JSON line; expected a string or an object with "
                                    "'instruction'") from None
            line = row.get("instruction") if isinstance(row, Mapping) else row
            if not isinstance(line, str) or not line.strip():
                raise ManifestError(f"{path}:{n}: expected a string or an object with a non-empty 'instruction'")
        found.append(line.strip())
    return list(dict.fromkeys(found))


def _clean_examples(examples: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(e.strip() for e in examples if e and e.strip()))


def brick_from_peft(adapter_dir: str | Path, out: str | Path, *, brick_id: str, description: str,
                    examples: Sequence[str], base_model: BaseModelRef, version: int = 1,
                    metrics: Mapping[str, float] | None = None, prompt_template: str | None = None,
                    skills: Sequence[str] = ()) -> Brick:
    """Write a brick folder `out` (which must not exist) from the PEFT LoRA folder `adapter_dir`: its two files
    copied, `brick.json` with their checksums and `base_model`. Staged: `out` is complete or absent.

    Checks the folder (`check_peft_folder`) and the manifest (one ManifestError listing the bad fields), not the
    model: `import_peft` (via `Library.add`) does that.
    """
    from bricks.training.export import neutral_base_path

    check_peft_folder(adapter_dir)
    manifest = {"id": brick_id, "version": version, "kind": "lora", "description": (description or "").strip(),
                "examples": _clean_examples(examples), "base_model": base_model.model_dump(), "files": [],
                "metrics": dict(metrics or {}), "prompt_template": prompt_template, "skills": list(skills),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    BrickManifest.from_dict(manifest, f"brick {brick_id!r}")  # bad id, description...: refused before any copy
    with staged_folder(Path(out)) as tmp:
        for name in ADAPTER_FILES:
            shutil.copyfile(Path(adapter_dir) / name, tmp / name)  # a symlinked file (HF cache) is copied as bytes
        neutral_base_path(tmp / ADAPTER_CONFIG, base_model.name)  # no path of this machine in the brick
        manifest["files"] = [file_entry(tmp, name).model_dump() for name in ADAPTER_FILES]
        BrickManifest.from_dict(manifest, f"brick {brick_id!r}").save(tmp / MANIFEST_NAME)
        verify_brick_folder(tmp)
    return verify_brick_folder(Path(out))


def model_config_for(model_dir: str | Path, library: "Library"):
    """The transformers config of the model folder `model_dir`, after checking that it is `library`'s base model
    (IncompatibleBrickError naming both fingerprints otherwise)."""
    from transformers import AutoConfig

    from bricks.fingerprint import check_base_model

    folder = Path(model_dir)
    check_base_model(folder, library.base_model, library.path)
    try:
        return AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BrickError(f"model {str(folder)!r} has no readable config ({first})") from None


def _open(library: "Library | str | Path") -> "Library":
    from bricks.library import Library

    return library if isinstance(library, Library) else Library.open(Path(library))


def import_peft(library: "Library | str | Path", adapter_dir: str | Path, *, brick_id: str, description: str,
                examples: Sequence[str] = (), model: str | Path | None = None, force: bool = False,
                prompt_template: str | None = None) -> Brick:
    """Add the PEFT LoRA folder `adapter_dir` to `library` as the new brick `brick_id`; the added Brick.

    With `model` (the library's base model folder: its fingerprint is checked) the adapter must fit the model's
    config: every tensor and target module a module of the model, shapes that fit. Without it, tensor names are
    checked against the LoRA layer pattern only. `force` adds an adapter that matches only partly. The saved
    index is not touched (`orchestrator.lifecycle.sync_saved_index` updates it; readers update it by themselves).
    """
    lib = _open(library)
    if brick_id in lib:
        raise LibraryError(f"brick id {brick_id!r} already exists in {str(lib.path)!r} (version "
                           f"{lib.active_version(brick_id)}); add a new version with update")
    model_config = model_config_for(model, lib) if model is not None else None
    with tempfile.TemporaryDirectory(prefix="brickwork-import-") as tmp:
        staged = brick_from_peft(adapter_dir, Path(tmp) / brick_id, brick_id=brick_id, description=description,
                                 examples=examples, base_model=lib.base_model, prompt_template=prompt_template)
        return lib.add(staged.path, model_config=model_config, force=force)


def update_from_peft(library: "Library | str | Path", adapter_dir: str | Path, brick_id: str, *,
                     description: str | None = None, examples: Sequence[str] | None = None,
                     model: str | Path | None = None, force: bool = False) -> Brick:
    """Add the PEFT LoRA folder `adapter_dir` as a new, active version of the existing brick `brick_id`.

    The manifest keeps the active version's description, examples, prompt template and skills unless
    `description` / `examples` are given; the adapter is checked as in `import_peft`.
    """
    lib = _open(library)
    if brick_id not in lib:
        raise LibraryError(f"no brick {brick_id!r} to update in {str(lib.path)!r}; import it first")
    current = lib.get(brick_id).manifest
    model_config = model_config_for(model, lib) if model is not None else None
    with tempfile.TemporaryDirectory(prefix="brickwork-import-") as tmp:
        staged = brick_from_peft(adapter_dir, Path(tmp) / brick_id, brick_id=brick_id,
                                 description=description or current.description,
                                 examples=list(examples) if examples else list(current.examples),
                                 base_model=lib.base_model, prompt_template=current.prompt_template,
                                 skills=current.skills)
        return lib.update(staged.path, model_config=model_config, force=force)
