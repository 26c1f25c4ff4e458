"""Shared fixtures: one tiny platform built by the real Flyte workflow, reused by every test
that needs trained models, embeddings, Feast tables and a slot (building it is the slow part)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Small enough for CI's 2 cores, big enough that the model learns the preference signal.
TINY_SIZE = 3000
TINY_EPOCHS = 8

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def platform_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace produced by ``workflows.platform.build_platform`` run locally."""
    from workflows.platform import build_platform

    root = tmp_path_factory.mktemp("platform")
    slot = build_platform(
        workspace=str(root), size=TINY_SIZE, epochs=TINY_EPOCHS, index_kind="ivfpq"
    )
    assert (root / "slots" / slot / "manifest.json").is_file(), f"workflow returned {slot!r}"
    return root
