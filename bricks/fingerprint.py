"""A fingerprint of a base model's weights: which base a brick was built on."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from bricks.errors import BrickError, UnsafeArtifactError
from bricks.manifest import PICKLE_SUFFIXES

__all__ = ["model_fingerprint"]

_EDGE = 1 << 20


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over each safetensors file's header, size, and first and last MiB of data, in name order.

    Cheap for multi-GB models, and any retraining changes it (every tensor's bytes move the edges or the
    header's offsets; a change confined to the middle of a file with identical layout is the blind spot).
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
