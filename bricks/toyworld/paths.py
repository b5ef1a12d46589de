"""Where the shipped toy world lives: inside the installed package, so it is found after any install."""

from __future__ import annotations

from pathlib import Path

__all__ = ["WORLD_DIR", "world_model_dir", "world_library_dir", "world_data_dir"]

WORLD_DIR = Path(__file__).resolve().parent / "world"


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"the toy world has no {path.name!r} at {str(path)!r}: run `brickwork toyworld build`")
    return path


def world_model_dir(world: Path = WORLD_DIR) -> Path:
    return _require(Path(world) / "model")


def world_library_dir(world: Path = WORLD_DIR) -> Path:
    return _require(Path(world) / "library")


def world_data_dir(world: Path = WORLD_DIR) -> Path:
    return _require(Path(world) / "data")
