"""What the streaming job has applied, per sink, kept in Redis beside the stream (durable with
its append-only file): the idempotency of at-least-once delivery.

    ebr:stream:applied:<sink>   hash  entity id -> rank of the last event that sink applied
    ebr:stream:catalog:<kind>   hash  entity id -> that event (kind, event_time, record)

A sink writes only events ranked above what it applied (``ebr.stream.events.rank``: last event
time wins, ties to the later entry), then records their ranks. A crash between the write and the
record re-applies the same event on redelivery (the same row again: invisible); a redelivered or
late older event is skipped. The catalog holds the latest event per job and member as streamed:
the final catalogue is the batch tables overlaid with it (``overlay_jobs``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd
import redis

from ebr.stream.events import Event, encode, rank

PREFIX = "ebr:stream"


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

    def remember(self, events: Sequence[Event]) -> None:
        """Keep each event as its entity's latest in the catalog (only if it is newer)."""
        for kind in ("job", "member"):
            mine = [e for e in events if e.entity[0] == kind]
            fresh = self.newer(f"catalog:{kind}", mine)
            if fresh:
                body = {e.entity_id: encode(e.kind, e.entity_id, e.event_time, e.record)["event"]
                        for e in fresh}  # fmt: skip
                self.client.hset(f"{self.prefix}:catalog:{kind}", mapping=body)
                self.mark(f"catalog:{kind}", fresh)

    def catalog(self, kind: str) -> dict[int, dict[str, Any]]:
        """entity id -> its latest streamed event (``kind``: job or member)."""
        raw = self.client.hgetall(f"{self.prefix}:catalog:{kind}")
        return {int(k): json.loads(v) for k, v in raw.items()}  # type: ignore[union-attr]


def overlay(table: pd.DataFrame, key: str, latest: dict[int, dict[str, Any]]) -> pd.DataFrame:
    """``table`` (jobs or members) with the streamed changes applied: a posted or updated job and
    an updated profile replace (or add) the row; a closed job's row is kept with ``active``
    False (the catalogue keeps closed jobs; slots serve active ones)."""
    rows = {int(i): r for i, r in zip(table[key], table.to_dict("records"), strict=True)}
    for entity, event in latest.items():
        if event["kind"] == "job_closed":
            if entity in rows:
                rows[entity] = {**rows[entity], "active": False}
        else:
            rows[entity] = {**rows.get(entity, {}), **event["record"]}
    out = pd.DataFrame(list(rows.values()), columns=table.columns)
    return out.sort_values(key, kind="stable").reset_index(drop=True)
