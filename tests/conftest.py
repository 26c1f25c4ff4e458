"""Shared fixtures: one tiny platform built by the real Flyte workflow, reused by every test
that needs trained models, embeddings, Feast tables and a slot (building it is the slow part)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Small enough for CI's 2 cores, big enough that the model learns the preference signal.
TINY_SIZE = 3000
TINY_EPOCHS = 8

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def platform_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace built by ``pyflyte run workflows/platform.py build_platform`` (the CLI a user
    runs), locally, at tiny size."""
    root = tmp_path_factory.mktemp("platform")
    cmd = [
        str(Path(sys.executable).with_name("pyflyte")), "run", "workflows/platform.py",
        "build_platform", "--workspace", str(root), "--size", str(TINY_SIZE),
        "--epochs", str(TINY_EPOCHS),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (
        f"pyflyte run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    assert (root / "slots" / "aliases.json").is_file(), proc.stdout[-2000:]
    return root
