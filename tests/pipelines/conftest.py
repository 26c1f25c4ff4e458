"""Fixtures of the pipeline tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.streaming.broker import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real ``redis-server`` on loopback for one test (append-only file on), stopped after."""
    server = RedisServer(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()
