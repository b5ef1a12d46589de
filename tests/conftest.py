"""Shared fixtures: a CI-sized toy world built once per test session by the real build pipeline."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def quick_world(tmp_path_factory):
    """(folder, report) of a `--quick` toy world: tiny data, a few dozen training steps, four LoRA bricks."""
    from bricks.toyworld.build import BuildConfig, build_world

    out = tmp_path_factory.mktemp("quick-world") / "w"
    report = build_world(out, BuildConfig.quick(seed=5))
    return out, report
