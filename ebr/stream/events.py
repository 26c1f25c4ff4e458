"""Change events of the catalogue and of member profiles: what a stream entry holds, checked.

A stream entry has one field, ``event``: the event as JSON::

    {"kind": "job_posted", "id": 12345, "event_time": "2026-11-30T10:15:00+00:00",
     "record": {"job_id": 12345, "title": "Data engineer", ...every slot column...}}

Kinds: ``job_posted`` and ``job_updated`` (the job's whole record: what the item tower embeds
and a slot shows), ``job_closed`` (no record), ``member_profile_updated`` (the member's profile
fields). Records follow the platform's record contract (``ebr.data.records``), so a streamed
job is checked exactly as a batch one. ``decode`` turns entries into events and, for every
entry that breaks the contract, a ``BadEvent`` with the reason (dead-lettered by the
pipeline; the stream keeps flowing). ``latest`` keeps, per entity, the event with the latest
``event_time``: a re-delivered or late older event never overwrites a newer one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from ebr.data.records import MAX_ID, check_jobs, check_members, echo
from ebr.data.tables import PROFILE_FIELDS

FIELD = "event"  # the one field of a stream entry
JOB_KINDS = ("job_posted", "job_updated", "job_closed")
KINDS = (*JOB_KINDS, "member_profile_updated")
MAX_EVENT_BYTES = 1 << 20  # 1 MiB: a job record is ~1-5 KB; a 10 MB description is refused
# What a job event's record must hold: what the item tower embeds and a slot serves.
JOB_FIELDS = ("job_id", "title", "company", "industry", "city", "country", "lat", "lon",
              "seniority", "employment_type", "remote", "active", "posted_at", "skills",
              "description")  # fmt: skip


@dataclass(frozen=True)
class Event:
    """One checked change: ``record`` is the job's or profile's fields (None for job_closed)."""

    entry_id: str  # the stream's id of the entry ("1701334500000-0")
    kind: str
    entity_id: int  # job_id or member_id
    event_time: datetime  # UTC
    record: dict[str, Any] | None

    @property
    def entity(self) -> tuple[str, int]:
        """What the event changes: ("job", id) or ("member", id)."""
        return ("job" if self.kind in JOB_KINDS else "member", self.entity_id)


@dataclass(frozen=True)
class BadEvent:
    """An entry that breaks the contract, and why (what the dead-letter stream keeps)."""

    entry_id: str
    reason: str
    raw: str  # the entry's text, cut to ``echo``'s length

    def to_fields(self) -> dict[str, str]:
        return {"entry_id": self.entry_id, "reason": self.reason, "raw": self.raw}


def encode(
    kind: str, entity_id: int, event_time: datetime, record: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """The fields of a stream entry for one event (``decode``'s inverse)."""
    when = event_time.astimezone(UTC).isoformat()
    rec = None if record is None else dict(record)
    body = {"kind": kind, "id": int(entity_id), "event_time": when, "record": rec}
    return {FIELD: json.dumps(body, default=_json_default, allow_nan=False)}


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | pd.Timestamp):
        return value.isoformat()
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def as_text(value: Any) -> str:
    """A Redis or Kafka value (bytes) or any other value as text."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _header(entry_id: str, fields: Mapping[Any, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(the event's JSON body, None) or (None, why it is unreadable)."""
    raw = next((v for k, v in fields.items() if as_text(k) == FIELD), None)
    if raw is None:
        return (
            None,
            f"entry has no '{FIELD}' field (fields: {sorted(as_text(k) for k in fields)[:5]})",
        )
    if len(raw) > MAX_EVENT_BYTES:
        return None, f"event is {len(raw)} bytes, over the {MAX_EVENT_BYTES} byte limit"
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        return None, f"not JSON: {err}"
    if not isinstance(body, dict):
        return None, f"event must be a JSON object, got {type(body).__name__}"
    kind = body.get("kind")
    if kind not in KINDS:
        return None, f"kind must be one of {KINDS}, got {echo(kind)}"
    entity = body.get("id")
    if isinstance(entity, bool) or not isinstance(entity, int) or not 0 <= entity <= MAX_ID:
        return None, f"id must be an integer in [0, {MAX_ID}], got {echo(entity)}"
    try:
        when = datetime.fromisoformat(str(body.get("event_time")))
    except ValueError:
        return (
            None,
            f"event_time must be ISO-8601 with a UTC offset, got {echo(body.get('event_time'))}",
        )
    if when.utcoffset() is None:
        return None, f"event_time must carry a UTC offset, got {echo(body.get('event_time'))}"
    record = body.get("record")
    if kind == "job_closed":
        return {**body, "event_time": when.astimezone(UTC), "record": None}, None
    if not isinstance(record, dict):
        return None, f"{kind} needs a 'record' object, got {echo(record)}"
    key = "job_id" if kind in JOB_KINDS else "member_id"
    if record.setdefault(key, entity) != entity:
        return None, f"record.{key} {echo(record[key])} differs from the event id {entity}"
    return {**body, "event_time": when.astimezone(UTC)}, None


def decode(entries: Iterable[tuple[Any, Mapping[Any, Any]]]) -> tuple[list[Event], list[BadEvent]]:
    """Stream entries ``(entry id, fields)`` -> (checked events in entry order, bad entries
    with their reasons). Job and profile records are checked as batches by the record
    contract, so one bad record never stops the rest."""
    heads: list[tuple[str, dict[str, Any]]] = []
    bad: list[BadEvent] = []
    for entry_id, fields in entries:
        eid = as_text(entry_id)
        body, why = _header(eid, fields)
        if body is None:
            raw = next((v for k, v in fields.items() if as_text(k) == FIELD), fields)
            bad.append(
                BadEvent(eid, str(why), echo(as_text(raw) if not isinstance(raw, Mapping) else raw))
            )
        else:
            heads.append((eid, body))
    refused = _refused_records(heads)
    events = []
    for eid, body in heads:
        if eid in refused:
            bad.append(BadEvent(eid, refused[eid], echo(json.dumps(body, default=str))))
        else:
            events.append(
                Event(eid, body["kind"], int(body["id"]), body["event_time"], body["record"])
            )
    return events, bad


def _refused_records(heads: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """entry id -> why its record breaks the contract, for job and profile records."""
    out: dict[str, str] = {}
    for kinds, fields, check, key in (
        (("job_posted", "job_updated"), JOB_FIELDS, check_jobs, "job_id"),
        (("member_profile_updated",), ("member_id", *PROFILE_FIELDS), check_members, "member_id"),
    ):
        rows = [(eid, b["record"]) for eid, b in heads if b["kind"] in kinds]
        if not rows:
            continue
        for eid, record in rows:
            missing = [f for f in fields if f not in record]
            if missing:
                out[eid] = f"record lacks {missing}"
        ok = [(eid, r) for eid, r in rows if eid not in out]
        if not ok:
            continue
        frame = pd.DataFrame([r for _, r in ok], index=range(len(ok)))
        # The ids were checked with the event (``_header``). Several events of one entity in a
        # read are no fault (``latest`` decides), and a repeated id must not hide the record's
        # other problems from the check: it sees each record under an id of its own.
        frame[key] = range(len(frame))
        if "posted_at" in frame:
            given = frame["posted_at"]
            frame["posted_at"] = pd.to_datetime(given, utc=True, errors="coerce", format="ISO8601")
            for row in (frame["posted_at"].isna() & given.notna()).to_numpy().nonzero()[0]:
                why = f"record.posted_at: not an ISO-8601 time, got {echo(given.iloc[row])}"
                out[ok[row][0]] = why
        _, rejected = check(frame, required=fields)
        for r in rejected:
            out.setdefault(ok[r.row][0], f"record.{r.field}: {r.reason}")
    return out


def latest(events: Iterable[Event]) -> list[Event]:
    """Per entity, the event with the latest ``event_time`` (ties: the later entry), in
    entry order: what every sink applies (last event time wins, idempotently)."""
    best: dict[tuple[str, int], tuple[tuple[datetime, tuple[int, int]], Event]] = {}
    for ev in events:
        rank = (ev.event_time, entry_order(ev.entry_id))
        if ev.entity not in best or rank >= best[ev.entity][0]:
            best[ev.entity] = (rank, ev)
    return sorted((v[1] for v in best.values()), key=lambda e: entry_order(e.entry_id))


def entry_order(entry_id: str) -> tuple[int, int]:
    """A stream entry id ``<ms>-<seq>`` as a sortable pair (string order is wrong: "-10" <
    "-9")."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def rank(event: Event) -> str:
    """The event's place in "last event time wins" as a string that sorts like the pair
    (event_time, entry order): what idempotent sinks store per entity and compare."""
    micros = (event.event_time - _EPOCH) // timedelta(microseconds=1)
    ms, seq = entry_order(event.entry_id)
    return f"{micros:020d}-{ms:015d}-{seq:010d}"
