"""The brick manifest (`brick.json`): a validated, immutable pydantic model that saves and loads itself."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bricks.atomic import atomic_write_text
from bricks.errors import ManifestError, UnsafeArtifactError

__all__ = ["BaseModelRef", "FileEntry", "BrickManifest", "file_entry", "safe_join", "sha256_file", "MANIFEST_NAME"]

log = logging.getLogger(__name__)

MANIFEST_NAME = "brick.json"
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
BRICK_ID = _ID  # what a brick id must match
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})


class BaseModelRef(BaseModel):
    """The base model a brick was built on: a name and a fingerprint of its weights."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    fingerprint: str


class FileEntry(BaseModel):
    """One artifact file of a brick, relative to its folder, with its checksum."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    sha256: str
    size: int = Field(ge=0)


def safe_join(folder: Path, relpath: str) -> Path:
    """`folder / relpath`, refusing absolute paths, `..`, symlinks out of the folder and pickle files."""
    folder = Path(folder).resolve()
    rel = Path(relpath)
    if rel.is_absolute() or ".." in rel.parts or not relpath.strip():
        raise UnsafeArtifactError(f"file path {relpath!r} escapes its brick folder {str(folder)!r}")
    target = (folder / rel).resolve()
    if folder != target and folder not in target.parents:
        raise UnsafeArtifactError(f"file path {relpath!r} resolves outside its brick folder {str(folder)!r}")
    if rel.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsafeArtifactError(f"file {relpath!r} is a pickle format; brickwork loads safetensors only")
    return target


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(folder: Path, relpath: str) -> FileEntry:
    """The FileEntry of an existing file inside `folder`."""
    path = safe_join(folder, relpath)
    return FileEntry(path=relpath, sha256=sha256_file(path), size=path.stat().st_size)


class BrickManifest(BaseModel):
    """What a brick is, what it serves, what it was built on, and its files. Unknown keys are kept."""

    model_config = ConfigDict(frozen=True, extra="allow")

    id: str
    version: int = Field(ge=1)
    kind: str
    description: str = Field(min_length=1)
    examples: list[str]
    base_model: BaseModelRef
    files: list[FileEntry]
    metrics: dict[str, float] = Field(default_factory=dict)
    created: str
    prompt_template: str | None = None
    prompt_format: Literal["raw", "chat"] | None = None  # how its prompts were rendered when it was trained
    skills: list[str] = Field(default_factory=list)
    # other ways users ask for what the brick does: indexed for routing, never shown to the model
    aliases: list[str] = Field(default_factory=list)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        from bricks.kinds import get_kind

        return get_kind(v).name

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError(f"id {v!r} must match [a-z0-9][a-z0-9_.-]*")
        return v

    @field_validator("prompt_template")
    @classmethod
    def _check_template(cls, v: str | None) -> str | None:
        if v is not None and ("{instruction}" not in v or "{input}" not in v):
            raise ValueError(f"prompt_template {v!r} must contain {{instruction}} and {{input}}")
        return v

    @field_validator("files")
    @classmethod
    def _check_paths(cls, v: list[FileEntry]) -> list[FileEntry]:
        for entry in v:
            rel = Path(entry.path)
            if rel.is_absolute() or ".." in rel.parts:
                raise ValueError(f"file path {entry.path!r} escapes its brick folder")
        return v

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"

    @classmethod
    def from_dict(cls, data: object, source: str = "<manifest>") -> "BrickManifest":
        if not isinstance(data, dict):
            raise ManifestError(f"{source}: expected a JSON object, got {type(data).__name__}")
        try:
            manifest = cls.model_validate(data)
        except ValidationError as e:
            missing = [str(err["loc"][0]) for err in e.errors() if err["type"] == "missing"]
            other = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()
                     if err["type"] != "missing"]
            parts = ([f"missing fields: {', '.join(missing)}"] if missing else []) + other
            if any("escapes its brick folder" in p for p in other):
                raise UnsafeArtifactError(f"{source}: {'; '.join(parts)}") from None
            raise ManifestError(f"{source}: {'; '.join(parts)}") from None
        if manifest.model_extra:
            log.warning("%s: unknown manifest keys kept: %s", source, ", ".join(sorted(manifest.model_extra)))
        return manifest

    @classmethod
    def from_file(cls, path: Path) -> "BrickManifest":
        path = Path(path)
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise ManifestError(f"{path}: no such manifest") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ManifestError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from None
        return cls.from_dict(data, str(path))

    def save(self, path: Path) -> None:
        """Write atomically: a temp file beside `path`, then rename."""
        atomic_write_text(Path(path), self.model_dump_json(indent=2) + "\n")
