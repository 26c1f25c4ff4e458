"""The event stream on a real Redis (started here, on loopback, append-only file on): events
round-trip, each kind of malformed event is dead-lettered with its reason while the rest
flow, unacknowledged entries are redelivered to another consumer, and nothing acknowledged
is lost when Redis is killed (SIGKILL) and restarted."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ebr.data.tables import PROFILE_FIELDS
from ebr.stream.events import FIELD, decode, encode, entry_order, latest
from pipelines.streaming.broker import Broker, RedisServer

T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


def job(job_id: int, **changes: Any) -> dict[str, Any]:
    record = {"job_id": job_id, "title": "Data engineer", "company": "Acme", "industry": "tech",
              "city": "Berlin", "country": "DE", "lat": 52.5, "lon": 13.4, "seniority": "mid",
              "employment_type": "full_time", "remote": False, "active": True,
              "posted_at": "2026-11-30T09:00:00+00:00", "skills": ["python", "sql"],
              "description": "Build pipelines."}  # fmt: skip
    return {**record, **changes}


def test_events_round_trip_and_the_latest_event_wins(redis_server: RedisServer) -> None:
    broker = Broker(redis_server.url, "worker-1")
    broker.produce(encode("job_posted", 7, T0, job(7)))
    broker.produce(
        encode("job_updated", 7, T0 + timedelta(minutes=5), job(7, title="Lead engineer"))
    )
    broker.produce(
        encode("job_updated", 7, T0 + timedelta(minutes=1), job(7, title="Stale"))
    )  # late
    broker.produce(encode("job_closed", 8, T0))
    profile = {f: None for f in PROFILE_FIELDS} | {"headline": "nurse", "skills": ["care"]}
    broker.produce(encode("member_profile_updated", 3, T0, profile))
    events, bad = decode(broker.read(count=10, block_ms=100))
    assert not bad and [e.kind for e in events][:2] == ["job_posted", "job_updated"]
    kept = latest(events)
    titles = {e.entity: (e.record or {}).get("title") for e in kept}
    assert titles[("job", 7)] == "Lead engineer"  # the older, re-ordered update lost
    assert {e.entity for e in kept} == {("job", 7), ("job", 8), ("member", 3)}
    assert broker.ack([e.entry_id for e in events]) == 5
    assert broker.read(count=10, block_ms=50) == []


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({FIELD: "{not json"}, "not JSON"),
        ({"other": "x"}, "has no 'event' field"),
        (
            {FIELD: json.dumps({"kind": "job_moved", "id": 1, "event_time": T0.isoformat()})},
            "kind must be",
        ),
        (
            {FIELD: json.dumps({"kind": "job_closed", "id": "7", "event_time": T0.isoformat()})},
            "id must be",
        ),
        (
            {FIELD: json.dumps({"kind": "job_closed", "id": 7, "event_time": "yesterday"})},
            "event_time",
        ),
        (
            {
                FIELD: json.dumps(
                    {"kind": "job_closed", "id": 7, "event_time": "2026-11-30T10:00:00"}
                )
            },
            "UTC offset",
        ),
        (
            encode("job_posted", 9, T0, {k: v for k, v in job(9).items() if k != "title"}),
            "lacks ['title']",
        ),
        (encode("job_posted", 9, T0, job(9, lat=200.0)), "record.lat"),
        (encode("job_posted", 9, T0, job(9, remote="yes")), "record.remote"),
        (encode("job_posted", 9, T0, job(10)), "differs from the event id"),
        (encode("job_posted", 9, T0, job(9, description="x" * 10_000_000)), "byte limit"),
        (encode("member_profile_updated", 4, T0, {"headline": "x"}), "record lacks"),
    ],
)
def test_malformed_events_are_dead_lettered_with_their_reason(
    redis_server: RedisServer, fields: dict[str, str], reason: str
) -> None:
    broker = Broker(redis_server.url, "worker-1")
    broker.produce(encode("job_posted", 1, T0, job(1)))
    broker.produce(fields)
    broker.produce(encode("job_closed", 2, T0))
    events, bad = decode(broker.read(count=10, block_ms=100))
    assert [e.entity_id for e in events] == [1, 2]  # the stream keeps flowing around it
    assert len(bad) == 1 and reason in bad[0].reason, bad
    broker.dead_letter(bad)
    broker.ack([e.entry_id for e in events])
    (dead,) = broker.dead_letters()
    assert dead["entry_id"] == bad[0].entry_id and reason in dead["reason"]
    assert broker.pending() == []  # dead-lettered entries are acknowledged, not retried


def test_unacknowledged_entries_go_to_another_consumer(redis_server: RedisServer) -> None:
    first = Broker(redis_server.url, "worker-1", claim_idle_ms=50)
    ids = [first.produce(encode("job_closed", i, T0)) for i in range(3)]
    assert [e for e, _ in first.read(count=3, block_ms=100)] == ids  # then it crashes
    second = Broker(redis_server.url, "worker-2", claim_idle_ms=50)
    import time

    time.sleep(0.1)
    again = [e for e, _ in second.read(count=10, block_ms=50)]
    assert again == ids and second.ack(again) == 3
    assert sorted(ids, key=entry_order) == ids


def test_nothing_acknowledged_is_lost_when_redis_is_killed(redis_server: RedisServer) -> None:
    broker = Broker(redis_server.url, "worker-1")
    ids = [broker.produce(encode("job_closed", i, T0)) for i in range(5)]
    got = broker.read(count=3, block_ms=100)
    broker.ack([e for e, _ in got])
    redis_server.kill()  # SIGKILL: no shutdown save; only the fsynced append-only file remains
    redis_server.start()
    broker = Broker(redis_server.url, "worker-1")
    assert [e for e, _ in broker.pending()] == []  # the acknowledged 3 stay acknowledged
    rest = [e for e, _ in broker.read(count=10, block_ms=100)]
    assert rest == ids[3:]  # the 2 never read are still there, once


def test_the_producer_command_appends_each_line(redis_server: RedisServer, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    lines = [json.loads(encode("job_closed", i, T0)[FIELD]) for i in range(1, 4)]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n{broken\n")
    cmd = [
        sys.executable,
        "-m",
        "pipelines.streaming.produce",
        "--redis-url",
        redis_server.url,
        "--file",
        str(path),
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout)["appended"] == 4  # appended as is; the job dead-letters
    events, bad = decode(Broker(redis_server.url, "w").read(count=10, block_ms=100))
    assert [e.entity_id for e in events] == [1, 2, 3] and "not JSON" in bad[0].reason


PROFILE = {f: None for f in PROFILE_FIELDS} | {"headline": "nurse", "skills": ["care"]}


@pytest.mark.parametrize(
    "bad, reason",
    [
        (encode("job_updated", 5, T0, job(5, lat="north")), "record.lat"),
        (encode("job_updated", 5, T0, job(5, remote="yes")), "record.remote"),
        (encode("job_updated", 5, T0, job(5, posted_at="yesterday")), "not an ISO-8601 time"),
        (encode("job_updated", 5, T0, job(5, title=None)), "record.title"),
        (encode("member_profile_updated", 5, T0, PROFILE | {"lat": "x"}), "record.lat"),
    ],
)
def test_a_bad_record_is_found_when_its_entity_has_other_events_in_the_read(
    bad: dict[str, str], reason: str
) -> None:
    """Several events of one job or member in one read are no fault, and must not hide a
    record's own problem from the contract check."""
    kind = "job" if "job_" in bad[FIELD][:30] else "member"
    good = (
        encode("job_updated", 5, T0, job(5)) if kind == "job"
        else encode("member_profile_updated", 5, T0, PROFILE)
    )  # fmt: skip
    later = T0 + timedelta(minutes=1)
    newer = (
        encode("job_updated", 5, later, job(5, title="Lead")) if kind == "job"
        else encode("member_profile_updated", 5, later, PROFILE)
    )  # fmt: skip
    events, refused = decode([("1-0", good), ("2-0", bad), ("3-0", newer)])
    assert [e.entry_id for e in events] == ["1-0", "3-0"]
    assert [b.entry_id for b in refused] == ["2-0"] and reason in refused[0].reason, refused
