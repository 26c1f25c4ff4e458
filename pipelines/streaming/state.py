"""What the streaming job has applied, per sink, kept in Redis beside the stream (durable with
its append-only file): the idempotency of at-least-once delivery.

    ebr:stream:applied:<sink>   hash  entity id -> rank of the last event that sink applied
    ebr:stream:catalog:<kind>   hash  entity id -> that event (kind, event_time, record)
    ebr:stream:known:job        set   job ids posted on the stream (``KnownJobs``)
    ebr:stream:held:job         hash  job id -> the latest update or close seen before its posting
    ebr:stream:held:job:at      zset  job id -> when it was held (epoch s; dropped after HOLD_S)
    ebr:stream:releases         set   releases brought up to date with the catalog
    ebr:stream:handoff:<slot>   str   the old log's last record copied into a compacted slot

A sink writes only events ranked above what it applied (``ebr.stream.events.rank``: last event
time wins, ties to the later entry), then records their ranks. A crash between the write and the
record re-applies the same event on redelivery (the same row again: invisible); a redelivered or
late older event is skipped. A stored rank dated further ahead than the event contract allows
(``ebr.stream.events.FUTURE_TOLERANCE``; written before that bound existed) never blocks a newer
event: it counts as nothing applied. The catalog holds the latest event per job and member as
streamed: the final catalogue is the batch tables overlaid with it (``ebr.stream.catalog.overlay``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import redis
from redis.exceptions import RedisError

from ebr.config import Workspace
from ebr.data.records import echo
from ebr.stream.events import (
    FIELD,
    FUTURE_TOLERANCE,
    REASON_CHARS,
    BadEvent,
    Event,
    as_text,
    decode,
    encode,
    latest,
    rank,
    time_key,
)

log = logging.getLogger(__name__)
PREFIX = "ebr:stream"
HOLD_S = 7 * 86400  # an update or close of a job not posted yet waits this long for its posting


class KnownJobs:
    """Which job ids exist: the catalogue's (``data/jobs.parquet``, read once) and every job
    posted on the stream (a Redis set, added as soon as a posting is decoded).

    An update or close of a job not posted yet may be an early one: two producers, a retried
    publish or a source without ordering (Pub/Sub) can deliver a close before the posting it
    follows. Such an event is dead-lettered (the job may never come) and also held, the latest
    per job, for ``hold_s``: when the job's posting arrives, the held event joins it and "the
    latest event time wins" decides, so an older posting stays behind a close (the job stays
    closed) or a newer update, and a posting newer than the close reopens the job."""

    def __init__(
        self, client: redis.Redis, ws: Workspace, prefix: str = PREFIX, hold_s: float = HOLD_S
    ) -> None:
        self.client, self.key = client, f"{prefix}:known:job"
        self.held_key, self.held_at = f"{prefix}:held:job", f"{prefix}:held:job:at"
        self.hold_s = hold_s
        path = ws.data / "jobs.parquet"
        ids = pd.read_parquet(path, columns=["job_id"])["job_id"] if path.is_file() else []
        self._base = {int(i) for i in ids}

    def split(
        self, events: Sequence[Event], now: float | None = None
    ) -> tuple[list[Event], list[BadEvent]]:
        """(events to apply: those about known jobs or members, plus the held events of the
        jobs posted here; updates and closes of jobs never posted, held and dead-lettered).
        ``now``: epoch seconds (default: the clock), what holding times count from."""
        when = time.time() if now is None else now
        self._expire(when)
        posted = sorted({e.entity_id for e in events if e.kind == "job_posted"})
        if posted:
            self.client.sadd(self.key, *posted)
        asked = sorted({e.entity_id for e in events if e.entity[0] == "job"} - self._base)
        found = self.client.smismember(self.key, asked) if asked else []
        unknown = {i for i, ok in zip(asked, found, strict=True) if not ok}
        early = [e for e in events if e.entity[0] == "job" and e.entity_id in unknown]
        self._hold(early, when)
        days = f"{self.hold_s / 86400:g} days"
        bad = [BadEvent(e.entry_id, f"unknown job: job {e.entity_id} was never posted (held "
                        f"{days}: its posting, if it comes, is applied with this event)",
                        echo(json.dumps(_body(e))))
               for e in early]  # fmt: skip
        kept = [e for e in events if not (e.entity[0] == "job" and e.entity_id in unknown)]
        return kept + self.held(posted), bad

    def held(self, job_ids: Sequence[int]) -> list[Event]:
        """The held events of ``job_ids`` (an update or close that came before the posting)."""
        if not job_ids:
            return []
        got = self.client.hmget(self.held_key, list(job_ids))
        bodies = [json.loads(g) for g in got if g is not None]  # type: ignore[union-attr]
        events, _ = decode([(b["entry_id"], {FIELD: json.dumps(b)}) for b in bodies])
        return events  # they held the contract when they were held

    def _hold(self, early: Sequence[Event], now: float) -> None:
        if not early:
            return
        best = {e.entity_id: e for e in latest(early)}
        have = self.client.hmget(self.held_key, list(best))
        fresh = {}
        for (job, event), held in zip(best.items(), have, strict=True):  # type: ignore[arg-type]
            if held is None or rank(event) > json.loads(held)["rank"]:
                fresh[job] = json.dumps({"entry_id": event.entry_id, "rank": rank(event),
                                         **_body(event)})  # fmt: skip
        if fresh:
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(self.held_key, mapping=fresh)
            pipe.zadd(self.held_at, {str(job): now for job in fresh})
            pipe.execute()

    def _expire(self, now: float) -> None:
        """Forget held events older than ``hold_s`` (their posting never came)."""
        got = self.client.zrangebyscore(self.held_at, "-inf", now - self.hold_s)
        old = [as_text(job) for job in got]  # type: ignore[union-attr]
        if old:
            pipe = self.client.pipeline(transaction=True)
            pipe.hdel(self.held_key, *old)
            pipe.zrem(self.held_at, *old)
            pipe.execute()


def decode_poll(
    entries: Sequence[tuple[Any, Any]], known: KnownJobs, received: datetime | None = None
) -> tuple[list[str], list[Event], list[BadEvent]]:
    """One poll's entries -> (the ids of its entries to acknowledge once every sink has their
    events, the latest event per entity to apply, the dead letters). ``received``: when the
    poll was read (default: now), what event times are bounded by and holds count from.

    Raises only ``RedisError`` (Redis is down: the poll stays pending, read again later).
    Anything else that fails is one entry's fault and becomes its dead letter: a poll that
    fails as a whole is decoded again one entry at a time, and an entry that fails alone is
    dead-lettered with the exception; the others flow."""
    when = received or datetime.now(UTC)
    try:
        return _decode_poll(entries, known, when)
    except RedisError:
        raise
    except Exception:  # noqa: BLE001 -- find the entry at fault
        log.exception("a poll of %d entries failed to decode; trying them one by one", len(entries))
    ids: list[str] = []
    events: list[Event] = []
    bad: list[BadEvent] = []
    for entry in entries:
        try:
            i, e, b = _decode_poll([entry], known, when)
        except RedisError:
            raise
        except Exception as err:  # noqa: BLE001 -- this entry alone: its dead letter
            eid, fields = _parts(entry)
            why = f"decode failed: {type(err).__name__}: {err}"[:REASON_CHARS]
            i, e, b = [], [], [BadEvent(eid, why, echo(as_text(fields)))]
        ids, events, bad = ids + i, events + e, bad + b
    return ids, latest(events), bad


def _decode_poll(
    entries: Sequence[tuple[Any, Any]], known: KnownJobs, received: datetime
) -> tuple[list[str], list[Event], list[BadEvent]]:
    decoded, bad = decode(entries, received)
    kept, unknown = known.split(decoded, now=received.timestamp())
    dead = {b.entry_id for b in unknown}
    ids = [e.entry_id for e in decoded if e.entry_id not in dead]
    return ids, latest(kept), bad + unknown


def _parts(entry: Any) -> tuple[str, Any]:
    try:
        entry_id, fields = entry
        return as_text(entry_id), fields
    except Exception:  # noqa: BLE001 -- not an (id, fields) pair
        return "?", entry


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
        # A stored rank dated past what the contract accepts now never wins (module docstring).
        ceiling = time_key(datetime.now(UTC) + FUTURE_TOLERANCE)
        return [e for e, d in zip(events, done, strict=True)
                if d is None or d.decode()[:20] > ceiling or rank(e) > d.decode()]  # fmt: skip

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
