"""The streaming job's local form (micro-batches, each a bounded Beam pipeline) and its retry
budget: which form runs where; a store failure that never heals leaves the poll pending until
its entries were delivered ``max_deliveries`` times, then dead-letters only the event that
fails alone, naming the exception (several kinds of such failures, in the embedding and in the
sinks); a micro-batch that raises is split down to the entry at fault, which is dead-lettered
once its budget is spent while the rest is acknowledged; the job stops on SIGTERM through
``pipelines.streaming.job``; the unbounded form still runs here when asked for."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from redis.exceptions import ResponseError

import pipelines.streaming.embed_stage as embed_stage
import pipelines.streaming.stages as stages
from ebr.config import Workspace
from ebr.stream.events import FIELD, Event, decode, encode
from pipelines.streaming import job as stream_job
from pipelines.streaming.broker import Broker, RedisServer, progress
from pipelines.streaming.embed_stage import _Settle, plan_members
from pipelines.streaming.local import run_local, settle
from pipelines.streaming.pipeline import as_polls, micro_batch
from pipelines.streaming.shared import close_shared, shared
from pipelines.streaming.sinks import Sinks
from pipelines.streaming.stages import StreamOptions, Work, _Write
from pipelines.towers import Embedding
from tests.pipelines.streaming import (
    Launched,
    StreamJob,
    copy_workspace,
    job_record,
    live_jobs,
    now,
    release_slot,
    wait_drained,
)

WHEN = datetime(2026, 12, 7, tzinfo=UTC)
BUDGET = 3
# Store failures that never heal, though their class reads as transient (TRANSIENT).
NEVER_HEALS = {
    "permission": PermissionError(13, "Permission denied", "slots/live/log"),
    "sqlite": sqlite3.OperationalError("database disk image is malformed"),
    "redis": ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
}


@pytest.mark.parametrize(
    "runner_options, source, mode, expected",
    [
        ([], "redis", "auto", True),
        (["--runner=DirectRunner"], "redis", "auto", True),
        (["--runner", "FnApiRunner"], "redis", "auto", True),
        (["--runner=FlinkRunner"], "redis", "auto", False),
        (["--runner", "DataflowRunner"], "redis", "auto", False),
        ([], "kafka", "auto", False),
        ([], "redis", "unbounded", False),
        ([], "redis", "micro-batch", True),
    ],
)
def test_micro_batches_run_locally_and_the_unbounded_form_elsewhere(
    runner_options: list[str], source: str, mode: str, expected: bool
) -> None:
    opts = StreamOptions("var/none", "redis://127.0.0.1:1/0", source=source)
    assert micro_batch(opts, runner_options, mode) is expected


@pytest.mark.parametrize(
    "runner_options, source, mode, problem",
    [
        (["--runner=FlinkRunner"], "redis", "micro-batch", "FlinkRunner"),
        ([], "pubsub", "micro-batch", "pubsub"),
        ([], "redis", "forever", "--mode must be one of"),
    ],
)
def test_a_mode_that_cannot_run_is_refused_naming_why(
    runner_options: list[str], source: str, mode: str, problem: str
) -> None:
    opts = StreamOptions("var/none", "redis://127.0.0.1:1/0", source=source)
    with pytest.raises(ValueError, match=problem):
        micro_batch(opts, runner_options, mode)


@pytest.fixture
def broker(redis_server: RedisServer) -> Iterator[Broker]:
    yield Broker(redis_server.url, "writer", claim_idle_ms=0)  # every read reclaims
    close_shared()


def _options(broker: Broker) -> StreamOptions:
    """Options whose ``broker()`` is the test's (the process's shared one for them)."""
    opts = StreamOptions("unused", "redis://unused", max_deliveries=BUDGET)
    assert shared("broker", opts, lambda: broker) is broker
    return opts


def _redeliver(broker: Broker) -> list[Event]:
    """The pending entries delivered once more (XAUTOCLAIM: one more delivery each)."""
    events, _ = decode(broker.read(count=50, block_ms=None))
    return events


class _Applied:
    def mark_seen(self, release_ids: Sequence[str]) -> None:
        pass

    def unseen(self, release_ids: Sequence[str]) -> list[str]:
        return []


class _Sinks:
    """Stands in for ``Sinks``: ``error`` for every write holding an event about ``broken``."""

    def __init__(self, broken: set[int], error: Exception) -> None:
        self.broken, self.error, self.written = broken, error, []
        self.applied = _Applied()

    def write(self, events: Sequence[Event], targets: Any, embedded: Any) -> None:
        if any(e.entity_id in self.broken for e in events):
            raise self.error
        self.written += [e.entity_id for e in events]


def _write_stage(broker: Broker, sinks: _Sinks) -> _Write:
    stage = _Write(_options(broker))
    stage._broker, stage._sinks, stage._lock = broker, sinks, threading.Lock()  # type: ignore[assignment]
    return stage


def _closes(broker: Broker, job_ids: Sequence[int]) -> list[Event]:
    for job_id in job_ids:
        broker.produce(encode("job_closed", job_id, WHEN))
    events, _ = decode(broker.read(count=50, block_ms=100))
    return events


@pytest.mark.parametrize("kind", NEVER_HEALS)
def test_a_sink_that_never_heals_dead_letters_the_event_once_its_budget_is_spent(
    broker: Broker, kind: str
) -> None:
    error = NEVER_HEALS[kind]
    sinks = _Sinks({7}, error)
    stage = _write_stage(broker, sinks)
    events = _closes(broker, [6, 7, 8])
    for _ in range(BUDGET - 1):  # within the budget: the whole poll stays pending
        work = Work([e.entry_id for e in events], events, (), {})
        assert list(stage.process(work)) == []
        assert broker.dead_letters() == [] and sinks.written == []
        events = _redeliver(broker)
    assert len(events) == 3
    work = Work([e.entry_id for e in events], events, (), {})
    assert list(stage.process(work)) == [work.entry_ids]  # all acknowledged
    assert sinks.written == [6, 8]
    (letter,) = broker.dead_letters()
    assert letter["entry_id"] == events[1].entry_id
    assert f"sink failed after {BUDGET} deliveries: {type(error).__name__}" in letter["reason"]
    assert str(error)[:40] in letter["reason"]


def test_a_store_that_is_down_for_a_poll_of_fresh_entries_leaves_it_pending(
    broker: Broker,
) -> None:
    """A spent entry does not spend the budget of the fresh entries read with it."""
    sinks = _Sinks({1, 2}, PermissionError(13, "Permission denied"))
    stage = _write_stage(broker, sinks)
    old = _closes(broker, [1])
    for _ in range(BUDGET - 1):
        old = _redeliver(broker)
    fresh = [e for e in _closes(broker, [2]) if e.entity_id == 2]  # read once, with the spent one
    work = Work([e.entry_id for e in old + fresh], old + fresh, (), {})
    assert list(stage.process(work)) == []  # pending: the fresh one has its budget left
    assert [d["entry_id"] for d in broker.dead_letters()] == []


@pytest.mark.parametrize("error", [RuntimeError("tower raised"), MemoryError("no room")])
def test_an_embedding_that_keeps_failing_dead_letters_the_event_once_its_budget_is_spent(
    broker: Broker, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def embed(ws: Any, events: Sequence[Event], targets: Any, cache: Any) -> dict[Any, Any]:
        if any(e.entity_id == 7 for e in events):
            raise error
        return {("jobs", "v1"): (None, [])}

    monkeypatch.setattr(embed_stage, "embed_events", embed)
    stage = _Settle(_options(broker))
    stage._ws, stage._cache = None, {}  # type: ignore[assignment]
    stage._targets = type("T", (), {"current": lambda self: ()})()  # type: ignore[assignment]
    events = _closes(broker, [6, 7, 8])
    failure = RuntimeError("the poll's embedding raised")  # what the shared transform reported

    def failed(events: list[Event]) -> Embedding:
        return Embedding((Work([e.entry_id for e in events], events), {}, (), failure), ())

    for _ in range(BUDGET - 1):
        assert list(stage.process(failed(events))) == []
        events = _redeliver(broker)
    (out,) = stage.process(failed(events))
    assert [e.entity_id for e in out.events] == [6, 8]
    assert out.entry_ids == [e.entry_id for e in events]  # the poll is acknowledged whole
    (letter,) = broker.dead_letters()
    assert letter["entry_id"] == events[1].entry_id
    assert f"embedding failed after {BUDGET} deliveries: {type(error).__name__}" in letter["reason"]
    assert progress(broker.client)[1] == 1  # the dead letter is acknowledged at once


def test_a_round_that_fails_or_cannot_be_planned_reaches_settle_with_its_error() -> None:
    """The Embed stage stays one line: a failed first round, or a second round that cannot be
    planned, travels on as the poll with its error (``_Settle`` decides), never raises."""
    work = Work(["1-0"], [])
    boom = RuntimeError("tower gone")
    carry, requests = plan_members(Embedding((work, (("jobs", "v1"),)), (), boom), None)
    assert carry == (work, {}, (), boom) and requests == ()
    # results that do not match the round's requests: planning fails, the error travels
    carry, requests = plan_members(Embedding((work, (("jobs", "v1"),)), ()), None)
    assert carry[0] is work and isinstance(carry[3], ValueError) and requests == ()


class _Batches:
    """Stands in for ``MicroBatches``: a run raises when it holds an entry whose event text
    has ``poison`` (else it acknowledges its entries); with ``broken`` every run raises."""

    def __init__(self, broker: Broker, broken: bool = False) -> None:
        self.broker, self.broken, self.runs = broker, broken, 0

    def run(self, polls: list[list[tuple[str, dict[str, str]]]]) -> None:
        self.runs += 1
        entries = [e for poll in polls for e in poll]
        if self.broken or any("poison" in fields[FIELD] for _, fields in entries):
            raise OverflowError("date value out of range [while running 'Decode']")
        self.broker.ack([eid for eid, _ in entries])


@pytest.mark.parametrize("where", [[0], [5], [12], [3, 9]])
def test_a_micro_batch_that_raises_is_split_to_the_entry_at_fault(
    broker: Broker, where: list[int]
) -> None:
    for i in range(13):
        text = "poison" if i in where else f"entry {i}"
        broker.produce({FIELD: text})
    batches, opts = _Batches(broker), _options(broker)
    settle(batches, broker, opts, as_polls(broker.read(count=50, block_ms=100), 4))  # type: ignore[arg-type]
    length, done = progress(broker.client)
    assert done == length - len(where)  # every other entry acknowledged
    assert broker.dead_letters() == []  # within the budget: pending, claimed again later
    for _ in range(BUDGET - 1):
        polls = as_polls(broker.read(count=50, block_ms=None), 4)
        settle(batches, broker, opts, polls)  # type: ignore[arg-type]
    assert progress(broker.client)[1] == length
    letters = broker.dead_letters()
    assert len(letters) == len(where)
    for letter in letters:
        assert letter["reason"].startswith(f"the job failed after {BUDGET} deliveries: Overflow")
        assert "poison" in letter["raw"]


def test_a_micro_batch_that_fails_without_entries_stops_the_job(broker: Broker) -> None:
    broker.produce({FIELD: "entry"})
    with pytest.raises(RuntimeError, match="fails without any entry"):
        settle(_Batches(broker, broken=True), broker, _options(broker),  # type: ignore[arg-type]
               as_polls(broker.read(count=5, block_ms=100), 4))  # fmt: skip
    assert broker.dead_letters() == []


def _posting(jobs: pd.DataFrame, job_id: int) -> dict[str, str]:
    """A new job ``job_id``, a copy of the catalogue's first."""
    template = job_record(jobs, int(jobs["job_id"].iloc[0]), job_id=job_id, active=True)
    return encode("job_posted", job_id, now(), template)


class _BrokenSinks(Sinks):
    """The real sinks, failing for good on any write holding job ``BROKEN``."""

    BROKEN = 9_500_002

    def write(self, events: Sequence[Event], targets: Any, embedded: Any) -> None:
        if any(e.entity_id == self.BROKEN for e in events):
            raise PermissionError(13, "Permission denied", "slot log")
        super().write(events, targets, embedded)


def test_the_local_job_dead_letters_an_entry_its_sinks_never_take_and_applies_the_rest(
    platform_ws: Path, tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process (the runner runs the stages here, so the sinks can be swapped)."""
    ws = copy_workspace(platform_ws, tmp_path / "ws")
    jobs = pd.read_parquet(ws / "data" / "jobs.parquet")
    monkeypatch.setattr(stages, "Sinks", _BrokenSinks)
    producer = Broker(redis_server.url, "producer")
    posted = [9_500_001, _BrokenSinks.BROKEN, 9_500_003]
    for jid in posted:
        producer.produce(_posting(jobs, jid))
    opts = StreamOptions(str(ws), redis_server.url, "local", poll_interval_s=0.05,
                         claim_idle_ms=300, max_deliveries=BUDGET)  # fmt: skip
    stop = threading.Event()
    job = threading.Thread(target=run_local, args=(opts,), kwargs={"stop": stop}, daemon=True)
    job.start()
    try:
        deadline = time.monotonic() + 180
        while progress(producer.client)[1] < len(posted):
            assert job.is_alive() and time.monotonic() < deadline, progress(producer.client)
            time.sleep(0.2)
    finally:
        stop.set()
        job.join(timeout=60)
    assert not job.is_alive()
    (letter,) = producer.dead_letters()
    assert f"sink failed after {BUDGET} deliveries: PermissionError" in letter["reason"]
    served = live_jobs(release_slot(ws))
    assert {9_500_001, 9_500_003} <= served.keys() and _BrokenSinks.BROKEN not in served


def test_stream_job_stops_the_micro_batch_job_with_sigterm(
    platform_ws: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    ws = copy_workspace(platform_ws, tmp_path / "ws")
    jobs = pd.read_parquet(ws / "data" / "jobs.parquet")
    handle = stream_job.start(Workspace(ws), redis_server.url)
    producer = Broker(redis_server.url, "producer")
    producer.produce(_posting(jobs, 9_600_001))
    launched = Launched(ws)
    try:
        wait_drained(producer.client, launched)
    finally:
        stopped = stream_job.stop(Workspace(ws))
    assert stopped["job_stopped"] and not launched.alive()
    log = Path(handle["log"]).read_text()
    assert "streaming as micro-batches" in log
    assert "stopped after" in log  # it ended its loop and closed its slot writers, not killed
    assert 9_600_001 in live_jobs(release_slot(ws))


def test_the_unbounded_form_still_runs_when_asked_for(
    platform_ws: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    ws = copy_workspace(platform_ws, tmp_path / "ws")
    jobs = pd.read_parquet(ws / "data" / "jobs.parquet")
    producer = Broker(redis_server.url, "producer")
    producer.produce(_posting(jobs, 9_700_001))
    job = StreamJob(ws, redis_server.url, tmp_path / "stream.log", "--mode", "unbounded")
    try:
        wait_drained(producer.client, job)
    finally:
        job.stop()
    assert "micro-batches" not in job.output()
    assert 9_700_001 in live_jobs(release_slot(ws))
