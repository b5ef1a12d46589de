"""brickwork's errors: one root (`BrickworkError`) and a subclass per area.

Every message is one line naming the bad value and what was expected. The root subclasses ValueError, so
code that caught ValueError before keeps working; the CLI prints one line for any BrickworkError (exit 2),
and the traceback with `--debug`.
"""

from __future__ import annotations

__all__ = ["BrickworkError", "BrickError", "ManifestError", "IncompatibleBrickError", "UnsafeArtifactError",
           "LibraryError", "ReadOnlyLibraryError", "IntegrityError", "MissingExtraError"]


class BrickworkError(ValueError):
    """Root of every error brickwork raises on purpose: bad input, a bad brick, a refused operation."""


class ConfigError(BrickworkError):
    """An option, argument or data file with a value brickwork does not accept (the message names it)."""


class MissingExtraError(BrickworkError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


class BrickError(BrickworkError):
    """Base class: a brick or library that cannot be used as it is."""


class ManifestError(BrickError):
    """A brick.json that is missing, malformed, or lacks required fields (all listed in one message)."""


class IncompatibleBrickError(BrickError):
    """A brick that does not fit the base model (other fingerprint, target modules, shapes)."""


class UnsafeArtifactError(BrickError):
    """A pickle artifact, a symlink, or a path that escapes its brick folder."""


class IntegrityError(BrickError):
    """A brick file whose bytes do not match its manifest's checksum, or that cannot be read."""


class LibraryError(BrickError):
    """A library folder that is corrupt, or an operation the library refuses."""


class ReadOnlyLibraryError(LibraryError, PermissionError):
    """A write refused because the library's folder cannot be written; nothing was changed. Also a
    PermissionError, so code that falls back on read-only storage (an in-memory index) keeps doing so."""
