"""brickwork's bricks: manifests, the LoRA and ffn_mask kinds, libraries on disk, training, and the toy world."""

from bricks.errors import BrickError, IncompatibleBrickError, LibraryError, ManifestError, UnsafeArtifactError
from bricks.library import Brick, Library, LibraryConfig, verify_brick_folder
from bricks.manifest import BaseModelRef, BrickManifest, FileEntry, file_entry
from bricks.prompt import DEFAULT_TEMPLATE, PromptTemplate

__all__ = ["BaseModelRef", "Brick", "BrickError", "BrickManifest", "DEFAULT_TEMPLATE", "FileEntry",
           "IncompatibleBrickError", "Library", "LibraryConfig", "LibraryError", "ManifestError", "PromptTemplate",
           "UnsafeArtifactError", "file_entry", "verify_brick_folder"]
