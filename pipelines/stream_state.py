"""What the streaming job has applied, per sink, kept in Redis beside the stream (durable with
its append-only file): the idempotency of at-least-once delivery.

    ebr:stream:applied:<sink>   hash  entity id -> rank of the last event that sink applied
    ebr:stream:catalog:<kind>   hash  entity id -> that event (kind, event_time, record)
    ebr:stream:known:job        set   job ids posted on the stream (``KnownJobs``)
    ebr:stream:releases         set   releases brought up to date with the catalog
    ebr:stream:handoff:<slot>   str   the old log's last record copied into a compacted slot

A sink writes only events ranked above what it applied (``ebr.stream.events.rank``: last event
time wins, ties to the later entry), then records their ranks. A crash between the write and the
record re-applies the same event on redelivery (the same row again: invisible); a redelivered or
late older event is skipped. The catalog holds the latest event per job and member as streamed:
the final catalogue is the batch tables overlaid with it (``ebr.stream.catalog.overlay``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd
import redis

from ebr.config import Workspace
from ebr.data.records import echo
from ebr.stream.events import FIELD, BadEvent, Event, decode, encode, rank

PREFIX = "ebr:stream"


class KnownJobs:
    """Which job ids exist: the catalogue's (``data/jobs.parquet``, read once) and every job
    posted on the stream (a Redis set, added as soon as a posting is decoded)."""

    def __init__(self, client: redis.Redis, ws: Workspace, prefix: str = PREFIX) -> None:
        self.client, self.key = client, f"{prefix}:known:job"
        path = ws.data / "jobs.parquet"
        ids = pd.read_parquet(path, columns=["job_id"])["job_id"] if path.is_file() else []
        self._base = {int(i) for i in ids}

    def split(self, events: Sequence[Event]) -> tuple[list[Event], list[BadEvent]]:
        """(events about known jobs or members, an update or close of a job never posted)."""
        posted = [e.entity_id for e in events if e.kind == "job_posted"]
        if posted:
            self.client.sadd(self.key, *posted)
        asked = sorted({e.entity_id for e in events if e.entity[0] == "job"} - self._base)
        found = self.client.smismember(self.key, asked) if asked else []
        unknown = {i for i, ok in zip(asked, found, strict=True) if not ok}
        bad = [BadEvent(e.entry_id, f"unknown job: job {e.entity_id} was never posted",
                        echo(json.dumps(_body(e))))
               for e in events if e.entity[0] == "job" and e.entity_id in unknown]  # fmt: skip
        return [e for e in events if not (e.entity[0] == "job" and e.entity_id in unknown)], bad


class Applied:
    """The per-sink ranks of applied events."""

    def __init__(self, client: redis.Redis, prefix: str = PREFIX) -> None:
        self.client, self.prefix = client, prefix

    def _key(self, sink: str) -> str:
        return f"{self.prefix}:applied:{sink}"

    def newer(self, sink: str, events: Sequence[Event]) -> list[Event]:
        """The events ``sink`` has not applied: ranked above its last one for the entity."""
        if not events:
            return []
        done = self.client.hmget(self._key(sink), [e.entity_id for e in events])
        return [e for e, d in zip(events, done, strict=True) if d is None or rank(e) > d.decode()]

    def mark(self, sink: str, events: Sequence[Event]) -> None:
        if events:
            self.client.hset(self._key(sink), mapping={e.entity_id: rank(e) for e in events})

    def inherit(self, old: str, new: str) -> None:
        """``new`` holds what ``old`` held (a compacted slot): keep the higher rank per entity."""
        got = {k: v for k, v in self.client.hgetall(self._key(old)).items()}  # type: ignore[union-attr]
        have = self.client.hgetall(self._key(new))
        merged = {k: v for k, v in got.items() if k not in have or have[k] < v}  # type: ignore[operator]
        if merged:
            self.client.hset(self._key(new), mapping=merged)

    def handed_off(self, slot: str) -> int | None:
        """The old log's last record copied into ``slot`` (a compacted one), None before."""
        got = self.client.get(f"{self.prefix}:handoff:{slot}")
        return None if got is None else int(got)  # type: ignore[arg-type]

    def mark_handed_off(self, slot: str, lsn: int) -> None:
        self.client.set(f"{self.prefix}:handoff:{slot}", lsn)

    def remember(self, events: Sequence[Event]) -> None:
        """Keep each event as its entity's latest in the catalog (only if it is newer)."""
        for kind in ("job", "member"):
            mine = [e for e in events if e.entity[0] == kind]
            fresh = self.newer(f"catalog:{kind}", mine)
            if fresh:
                body = {e.entity_id: json.dumps({"entry_id": e.entry_id, **_body(e)})
                        for e in fresh}  # fmt: skip
                self.client.hset(f"{self.prefix}:catalog:{kind}", mapping=body)
                self.mark(f"catalog:{kind}", fresh)

    def catalog(self, kind: str) -> dict[int, dict[str, Any]]:
        """entity id -> its latest streamed event (``kind``: job or member): entry_id, kind,
        id, event_time, record."""
        raw = self.client.hgetall(f"{self.prefix}:catalog:{kind}")
        return {int(k): json.loads(v) for k, v in raw.items()}  # type: ignore[union-attr]

    def catalog_events(self) -> list[Event]:
        """The catalog as events (what a release added later is brought up to date with)."""
        bodies = [*self.catalog("job").values(), *self.catalog("member").values()]
        entries = [(body["entry_id"], {FIELD: json.dumps(body)}) for body in bodies]
        events, _ = decode(entries)  # they held the contract when they were applied
        return events

    def unseen(self, release_ids: Sequence[str]) -> list[str]:
        """Releases the job has not brought up to date with the catalog yet."""
        if not release_ids:
            return []
        seen = self.client.smismember(f"{self.prefix}:releases", list(release_ids))
        return [r for r, ok in zip(release_ids, seen, strict=True) if not ok]

    def mark_seen(self, release_ids: Sequence[str]) -> None:
        if release_ids:
            self.client.sadd(f"{self.prefix}:releases", *release_ids)


def _body(event: Event) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(
        encode(event.kind, event.entity_id, event.event_time, event.record)[FIELD]
    )
    return body
