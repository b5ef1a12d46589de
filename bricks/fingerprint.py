"""A fingerprint of a base model's weights: which base a brick was built on, and whether a model is a library's."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from bricks.errors import BrickError, IncompatibleBrickError, UnsafeArtifactError
from bricks.manifest import PICKLE_SUFFIXES, BaseModelRef

__all__ = ["model_fingerprint", "check_base_model"]

_EDGE = 1 << 20


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over each safetensors file's header, size, and first and last MiB of data, in name order.

    Cheap for multi-GB models (at most 2 MiB read per file, whatever its size), and any retraining changes it
    (every tensor's bytes move the edges or the header's offsets; a change confined to the middle of a file with
    identical layout is the blind spot).
    """
    folder = Path(model_dir)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES) if folder.is_dir() else []
        if pickles:
            raise UnsafeArtifactError(f"model folder {str(folder)!r} holds pickle weights {pickles}; safetensors only")
        raise BrickError(f"model folder {str(folder)!r} has no *.safetensors weights")
    h = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            h.update(path.name.encode() + struct.pack("<Q", size))
            h.update(f.read(header_len))
            data_start = 8 + header_len
            h.update(f.read(_EDGE))
            f.seek(max(data_start, size - _EDGE))
            h.update(f.read(_EDGE))
    return "sha256:" + h.hexdigest()


def check_base_model(model_dir: Path, base_model: BaseModelRef, library: str | Path | None = None) -> str:
    """The fingerprint of the model folder `model_dir`, after checking it is the library's `base_model`.

    A folder that is not a model raises `ModelLoadError`; another model raises one IncompatibleBrickError that
    names both fingerprints (and `library`, where given), before any brick or weight is loaded.
    """
    from bricks.model_io import check_model_dir

    folder = check_model_dir(Path(model_dir))
    found = model_fingerprint(folder)
    if found != base_model.fingerprint:
        where = f"library {str(library)!r}" if library is not None else "the library"
        raise IncompatibleBrickError(
            f"model {str(folder)!r} has fingerprint {found}, but {where} was built on {base_model.name} "
            f"{base_model.fingerprint}; give the library's base model (--model) or a library made for this one")
    return found
