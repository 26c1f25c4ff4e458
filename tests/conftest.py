"""Shared fixtures: one tiny platform built by the real Flyte workflow, reused by every test
that needs trained models, embeddings, Feast tables and a slot (building it is the slow part)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from ebr.net import free_port

# Small enough for CI's 2 cores, big enough that the model learns the preference signal.
TINY_SIZE = 3000
TINY_EPOCHS = 6

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 120.0
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def platform_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace built by ``pyflyte run workflows/platform.py build_platform`` (the CLI a user
    runs), locally, at tiny size."""
    root = tmp_path_factory.mktemp("platform")
    config = {"workspace": str(root), "data": {"n_jobs": TINY_SIZE}}
    config["train"] = {"epochs": TINY_EPOCHS}
    cmd = [
        str(Path(sys.executable).with_name("pyflyte")), "run", "workflows/platform.py",
        "build_platform", "--config", json.dumps(config),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (
        f"pyflyte run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    assert (root / "releases" / "state.json").is_file(), proc.stdout[-2000:]
    return root


@pytest.fixture(scope="session")
def api(platform_ws: Path) -> Iterator[httpx.Client]:
    """HTTP client for the Serve app over ``platform_ws`` (one Ray + Serve per test session)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from serving.app import APP_NAME, REQUEST_TIMEOUT_S, build_app

    # Replicas import `serving` and `feature_repo`: make the repo importable whatever the cwd.
    paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}},
    )
    port = free_port()
    try:
        options = {"host": "127.0.0.1", "port": port, "request_timeout_s": REQUEST_TIMEOUT_S}
        serve.start(http_options=options)
        serve.run(build_app({"workspace": str(platform_ws)}), name=APP_NAME, blocking=False)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0)
        deadline = time.monotonic() + READY_TIMEOUT_S
        # The proxy answers 404 until the app's routes are live: poll a real route.
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"/healthz not ready after {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.5)
        yield client
        client.close()
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def movielens() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """MovieLens-100k (ratings, users, items), read in place from the recbole package."""
    from ebr.data.movielens import load_movielens

    return load_movielens()


@pytest.fixture(scope="session")
def split(movielens: tuple[pd.DataFrame, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """MovieLens' leak-free time split (train, test)."""
    from ebr.data.movielens import time_split

    return time_split(movielens[0])
