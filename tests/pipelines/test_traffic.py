"""Live traffic from the marketplace generator: every event it makes holds the event contract,
the mix has every kind, postings get new ids, closes pick open jobs, and the producer command
sends it to a real Redis at the rate asked."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from ebr.config import DataConfig
from ebr.data.marketplace import generate
from ebr.stream.events import decode
from ebr.stream.traffic import Traffic
from pipelines.streaming.broker import Broker, RedisServer
from pipelines.streaming.produce import produce_live


def _tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    market = generate(DataConfig(n_jobs=300, seed=3))
    return market.jobs, market.members


def test_traffic_events_hold_the_contract_and_mix_every_kind() -> None:
    jobs, members = _tables()
    entries = Traffic(jobs, members, seed=5, pool=200).backlog(600, span_s=600)
    events, bad = decode([(f"{i + 1}-0", e) for i, e in enumerate(entries)])
    assert not bad, bad[:3]
    kinds = Counter(e.kind for e in events)
    assert set(kinds) == {"job_posted", "job_updated", "job_closed", "member_profile_updated"}
    assert kinds["job_updated"] > kinds["job_posted"] > kinds["job_closed"]
    known = set(jobs["job_id"])
    posted = [e.entity_id for e in events if e.kind == "job_posted"]
    assert len(set(posted)) == len(posted) and min(posted) > max(known)
    open_ids = set(jobs.loc[jobs["active"], "job_id"]) | set(posted)
    assert {e.entity_id for e in events if e.kind == "job_closed"} <= open_ids
    times = [e.event_time for e in events]
    assert times == sorted(times)
    replay = Traffic(jobs, members, seed=5, pool=200).backlog(600, span_s=600)
    again, _ = decode([(f"{i + 1}-0", e) for i, e in enumerate(replay)])

    def shape(evs: list[Any]) -> list[tuple[str, int, Any]]:
        return [(e.kind, e.entity_id, (e.record or {}).get("title")) for e in evs]

    assert shape(again) == shape(events)  # the same seed, the same traffic


def test_produce_live_sends_traffic_at_the_rate(tmp_path: Path) -> None:
    jobs, members = _tables()
    (tmp_path / "ws" / "data").mkdir(parents=True)
    jobs.to_parquet(tmp_path / "ws" / "data" / "jobs.parquet")
    members.to_parquet(tmp_path / "ws" / "data" / "members.parquet")
    server = RedisServer(tmp_path / "redis")
    try:
        broker = Broker(server.url, "producer")
        ids = produce_live(broker, tmp_path / "ws", rate=50, seconds=1.0)
        assert 45 <= len(ids) <= 50 and broker.client.xlen("ebr:events") == len(ids)
        _, bad = decode(broker.read(count=100, block_ms=100))
        assert not bad
    finally:
        server.stop()
