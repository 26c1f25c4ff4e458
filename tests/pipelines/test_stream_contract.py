"""The streaming job's decode step on a real Redis (``pipelines.streaming.state``): an update or
close that arrives before its job's posting is held, so a later-arriving older posting stays
behind it ("latest event time wins" across polls, not only within one); a poll never fails
because of one entry (the entry at fault is dead-lettered, the rest flow); poison entries'
dead letters can always be written; a far-future rank stored before the time bound existed
blocks nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

import pipelines.streaming.state as state_mod
from ebr.config import Workspace
from ebr.stream.events import FIELD, Event, encode, rank
from pipelines.streaming.broker import Broker, RedisServer
from pipelines.streaming.state import Applied, KnownJobs, decode_poll
from tests.unit.test_stream_contract import NOW, POISON, job

T = datetime.now(UTC) - timedelta(hours=1)
J = 9_200_001


def at(seconds: float) -> datetime:
    return T + timedelta(seconds=seconds)


def post(s: float, title: str = "posted") -> dict[str, str]:
    return encode("job_posted", J, at(s), job(J, title=title))


def update(s: float, title: str) -> dict[str, str]:
    return encode("job_updated", J, at(s), job(J, title=title))


def close(s: float) -> dict[str, str]:
    return encode("job_closed", J, at(s))


class Stream:
    """Polls through ``decode_poll`` as the job's Decode stage runs them (one poll per call)."""

    def __init__(self, url: str, root: Path, hold_s: float = 7 * 86400) -> None:
        self.broker = Broker(url, "decoder")
        self.known = KnownJobs(self.broker.client, Workspace(root), hold_s=hold_s)
        self.n = 0

    def poll(self, *entries: dict[str, str], received: datetime | None = None) -> list[Event]:
        """The events of one poll to apply, for job J; dead letters written as the job does."""
        polled = []
        for fields in entries:
            self.n += 1
            polled.append((f"{1_000 + self.n}-0", fields))
        ids, events, bad = decode_poll(polled, self.known, received)
        self.broker.dead_letter(bad, ack=False)
        assert set(ids) <= {eid for eid, _ in polled}  # held events are acknowledged already
        return [e for e in events if e.entity == ("job", J)]


@pytest.fixture
def stream(redis_server: RedisServer, tmp_path: Path) -> Stream:
    return Stream(redis_server.url, tmp_path)


def outcome(events: list[Event]) -> tuple[str, str | None]:
    (event,) = events
    return event.kind, (event.record or {}).get("title")


@pytest.mark.parametrize(
    "polls, expected",
    [
        ([[close(5)], [post(0)]], ("job_closed", None)),  # the close came first: stays closed
        ([[update(5, "newer")], [post(0, "older")]], ("job_updated", "newer")),
        ([[close(5)], [post(10, "reposted")]], ("job_posted", "reposted")),  # newer reopens
        ([[update(3, "mid")], [close(5)], [post(0)]], ("job_closed", None)),
        ([[close(5)], [update(3, "late")], [post(0)]], ("job_closed", None)),
        ([[close(5), update(7, "last")], [post(0)]], ("job_updated", "last")),
        ([[close(5)], [post(0), update(2, "x")]], ("job_closed", None)),
    ],
)
def test_an_early_update_or_close_is_applied_with_its_later_posting(
    stream: Stream, polls: list[list[dict[str, str]]], expected: tuple[str, str | None]
) -> None:
    for early in polls[:-1]:
        assert stream.poll(*early) == []  # held, not applied: the job does not exist yet
    assert outcome(stream.poll(*polls[-1])) == expected
    reasons = [d["reason"] for d in stream.broker.dead_letters()]
    assert reasons and all(f"job {J} was never posted (held" in r for r in reasons), reasons
    # A redelivered posting (its poll failed a sink) meets the held event again.
    assert outcome(stream.poll(*polls[-1])) == expected


def test_within_one_poll_nothing_is_held(stream: Stream) -> None:
    assert outcome(stream.poll(close(5), post(0))) == ("job_closed", None)
    assert stream.broker.dead_letters() == []


def test_a_held_event_is_forgotten_after_the_hold(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    s, now = Stream(redis_server.url, tmp_path, hold_s=60), datetime.now(UTC)
    assert s.poll(close(5), received=now) == []
    kept = s.poll(post(0, "kept"), received=now + timedelta(seconds=30))
    assert outcome(kept) == ("job_closed", None)
    late = s.poll(post(0, "came late"), received=now + timedelta(seconds=61))
    assert outcome(late) == ("job_posted", "came late")
    assert s.broker.client.hlen(s.known.held_key) == 0


def test_jobs_of_the_catalogue_are_known(redis_server: RedisServer, tmp_path: Path) -> None:
    import pandas as pd

    (tmp_path / "data").mkdir()
    pd.DataFrame({"job_id": [J]}).to_parquet(tmp_path / "data" / "jobs.parquet")
    s = Stream(redis_server.url, tmp_path)
    assert outcome(s.poll(close(5))) == ("job_closed", None)
    assert s.broker.dead_letters() == []


def test_one_entry_that_breaks_decoding_is_its_own_dead_letter(
    stream: Stream, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = state_mod.decode

    def decode(entries: Any, received: Any = None) -> Any:
        if any("boom" in str(f) for _, f in entries):
            raise MemoryError("boom")  # whatever escapes the contract's own checks
        return real(entries, received)

    monkeypatch.setattr(state_mod, "decode", decode)
    polled = [("1-0", post(0, "a")), ("1-1", post(1, "boom")), ("1-2", close(2)), ("1-3", "x")]
    ids, events, bad = decode_poll(polled, stream.known)  # type: ignore[arg-type]
    assert ids == ["1-0", "1-2"] and [e.entry_id for e in events] == ["1-2"]
    reasons = {b.entry_id: b.reason for b in bad}
    assert reasons["1-1"].startswith("decode failed: MemoryError: boom")
    assert "must be a mapping" in reasons["1-3"]
    stream.broker.dead_letter(bad)
    assert len(stream.broker.dead_letters()) == 2


def test_redis_down_leaves_the_poll_pending(stream: Stream, redis_server: RedisServer) -> None:
    redis_server.kill()
    with pytest.raises(RedisConnectionError):
        decode_poll([("1-0", post(0))], stream.known)


def test_every_poison_entry_is_dead_lettered_in_redis(stream: Stream) -> None:
    broker = stream.broker
    ids = [broker.produce({FIELD: "placeholder"}) for _ in POISON]  # real entry ids
    polled = [(eid, fields) for eid, (fields, _) in zip(ids, POISON.values(), strict=True)]
    good = encode("job_posted", 5, NOW, job(5))
    polled.append((broker.produce(good), good))
    _, events, bad = decode_poll(polled, stream.known, received=NOW)
    broker.dead_letter(bad, ack=False)
    letters = {d["entry_id"]: d["reason"] for d in broker.dead_letters()}
    for eid, (name, (_, phrase)) in zip(ids, POISON.items(), strict=True):
        assert phrase in letters.get(eid, ""), (name, letters.get(eid))
    assert [e.entry_id for e in events] == [polled[-1][0]] and len(letters) == len(POISON)


def test_a_far_future_rank_stored_before_the_bound_blocks_nothing(stream: Stream) -> None:
    applied = Applied(stream.broker.client)
    future = Event("1-0", "job_updated", J, datetime(9999, 12, 30, tzinfo=UTC), job(J))
    old = Event("2-0", "job_updated", J, at(0), job(J))
    now = Event("3-0", "job_closed", J, datetime.now(UTC), None)
    applied.mark("slot:s", [now])
    assert applied.newer("slot:s", [old]) == []  # an older event is still skipped
    stream.broker.client.hset("ebr:stream:applied:slot:s", J, rank(future))
    assert applied.newer("slot:s", [now]) == [now]


@pytest.mark.slow
def test_the_running_job_survives_poison_future_and_reordered_events(
    platform_ws: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    """The real job (a subprocess, real sinks): a poison event in the same read as a good
    posting, a close read before its older posting, an update dated 9999 before a real close.
    The job keeps running; the good postings are served; both closed jobs stay closed."""
    import pandas as pd

    from tests.pipelines.streaming import (
        StreamJob,
        copy_workspace,
        job_record,
        live_jobs,
        release_slot,
        wait_drained,
    )

    ws = copy_workspace(platform_ws, tmp_path / "ws")
    jobs = pd.read_parquet(ws / "data" / "jobs.parquet")
    base = int(jobs.loc[jobs["active"], "job_id"].iloc[0])  # served before and after
    j1, j2, j3, j4 = 9_300_001, 9_300_002, 9_300_003, 9_300_004
    t = datetime.now(UTC)

    def posting(jid: int, when: datetime, title: str) -> dict[str, str]:
        return encode("job_posted", jid, when, job_record(jobs, base, job_id=jid, title=title))

    producer = Broker(redis_server.url, "producer")
    job = StreamJob(ws, redis_server.url, tmp_path / "stream.log")
    try:
        for batch in (
            [posting(j3, t, "Vexmora"), {FIELD: json.dumps({"kind": "job_closed", "id": base,
             "event_time": "0001-01-01T00:00:00+05:00"})}, posting(j2, t, "With the poison"),
             encode("job_closed", j1, t + timedelta(seconds=5))],
            [posting(j1, t, "Reordered"), encode("job_updated", j3, datetime(9999, 12, 30,
             tzinfo=UTC), job_record(jobs, base, job_id=j3, title="Dated 9999"))],
            [encode("job_closed", j3, datetime.now(UTC)), posting(j4, t, "After the poison")],
        ):  # fmt: skip
            for fields in batch:
                producer.produce(fields)
            wait_drained(producer.client, job)  # each batch is its own read
        assert job.alive(), job.output()
    finally:
        job.stop()
    served = live_jobs(release_slot(ws))
    assert (
        served[j2][1]["title"] == "With the poison" and served[j4][1]["title"] == "After the poison"
    )
    assert j1 not in served and j3 not in served and base in served
    reasons = [d["reason"] for d in producer.dead_letters()]
    assert any("out of range in UTC" in r for r in reasons), reasons
    assert any("after the event was received" in r for r in reasons), reasons
    assert any(f"job {j1} was never posted (held" in r for r in reasons), reasons
