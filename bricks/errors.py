"""Errors of the brick layer: each message is one line naming the bad value and what was expected."""

from __future__ import annotations

__all__ = ["BrickError", "ManifestError", "IncompatibleBrickError", "UnsafeArtifactError", "LibraryError"]


class BrickError(ValueError):
    """Base class: a brick or library that cannot be used as it is."""


class ManifestError(BrickError):
    """A brick.json that is missing, malformed, or lacks required fields (all listed in one message)."""


class IncompatibleBrickError(BrickError):
    """A brick that does not fit the base model (other fingerprint, target modules, shapes)."""


class UnsafeArtifactError(BrickError):
    """A pickle artifact, or a path that escapes its brick folder."""


class LibraryError(BrickError):
    """A library folder that is corrupt, or an operation the library refuses."""
