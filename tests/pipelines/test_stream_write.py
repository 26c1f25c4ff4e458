"""How the streaming job's Write stage routes failures (real Redis for the dead letters): an
event the sinks cannot take is dead-lettered with its reason while the poll's other events are
applied and acknowledged; a failing store leaves the whole poll pending."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from ebr.stream.events import Event, decode, encode
from pipelines.streaming.broker import Broker, RedisServer
from pipelines.streaming.pipeline import StreamOptions, Work, _Write


class _Applied:
    def mark_seen(self, release_ids: Sequence[str]) -> None:
        pass


class _Sinks:
    """Stands in for ``Sinks``: refuses events about ``refuse`` ids with ``error``."""

    def __init__(self, refuse: set[int], error: Exception) -> None:
        self.refuse, self.error, self.written = refuse, error, []
        self.applied = _Applied()

    def write(self, events: Sequence[Event], targets: Any, embedded: Any) -> None:
        if any(e.entity_id in self.refuse for e in events):
            raise self.error
        self.written += [e.entity_id for e in events]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    server = RedisServer(tmp_path / "redis")
    try:
        yield Broker(server.url, "writer")
    finally:
        server.stop()


def _stage(broker: Broker, sinks: _Sinks) -> _Write:
    stage = _Write(StreamOptions("unused", "redis://unused"))
    stage._broker, stage._sinks, stage._lock = broker, sinks, threading.Lock()  # type: ignore[assignment]
    return stage


def _work(broker: Broker) -> Work:
    when = datetime(2026, 11, 30, tzinfo=UTC)
    for job_id in (6, 7, 8):
        broker.produce(encode("job_closed", job_id, when))
    events, _ = decode(broker.read(count=10, block_ms=100))
    return Work([e.entry_id for e in events], events, (), {})


def test_an_event_the_sinks_cannot_take_is_dead_lettered_and_the_rest_applied(
    broker: Broker,
) -> None:
    sinks = _Sinks({7}, ValueError("column 'lat' does not fit the slot's float64"))
    work = _work(broker)
    assert list(_stage(broker, sinks).process(work)) == [work.entry_ids]  # all acknowledged
    assert sinks.written == [6, 8]
    (letter,) = broker.dead_letters()
    assert letter["entry_id"] == work.events[1].entry_id
    assert letter["reason"].startswith("sink failed: ValueError: column 'lat'")


def test_a_failing_store_leaves_the_poll_pending(broker: Broker) -> None:
    sinks = _Sinks({6, 7, 8}, RedisConnectionError("Connection refused"))
    assert list(_stage(broker, sinks).process(_work(broker))) == []  # nothing acknowledged
    assert broker.dead_letters() == [] and sinks.written == []
