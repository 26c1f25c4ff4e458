"""Change events of the catalogue and of member profiles: what a stream entry holds, checked.

A stream entry has one field, ``event``: the event as JSON::

    {"kind": "job_posted", "id": 12345, "event_time": "2026-11-30T10:15:00+00:00",
     "record": {"job_id": 12345, "title": "Data engineer", ...every slot column...}}

Kinds: ``job_posted`` and ``job_updated`` (the job's whole record: what the item tower embeds
and a slot shows), ``job_closed`` (no record), ``member_profile_updated`` (the member's profile
fields). Records follow the platform's record contract (``ebr.data.records``), so a streamed
job is checked exactly as a batch one. Ids follow the platform's one id contract
(``ebr.ids``: integers in [1, 2**63 - 1], as the HTTP API takes them).

``event_time`` is an ISO-8601 string with a UTC offset (any offset; ``Z`` too), compared in
UTC to the microsecond (finer digits are dropped). It must lie in
[``MIN_EVENT_TIME``, received + ``FUTURE_TOLERANCE``]: 1970-01-01 UTC (the epoch every sink's
timestamps count from) up to 5 minutes after the job reads the entry (producer clock skew). An
event dated further ahead is refused with the reason rather than clamped: per entity the latest
event time wins for good, so one producer clock or serialisation bug (a date in 9999) would
otherwise block every real change after it.

``decode`` turns entries into events and, for every entry that breaks the contract, a
``BadEvent`` with the reason (dead-lettered by the pipeline; the stream keeps flowing). It never
raises because of one entry: whatever fails while one entry is read (an out-of-range time, JSON
nested too deep, text that is not Unicode, a record check that raises) is that entry's dead
letter. ``latest`` keeps, per entity, the event with the latest ``event_time``: a re-delivered or
late older event never overwrites a newer one; ``rank`` is the same order as a string.

Size: the event contract (kinds, fields, ranks) and its checks, one place for producers and the
streaming job.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from ebr.data.records import check_jobs, check_members, echo
from ebr.data.tables import PROFILE_FIELDS
from ebr.ids import id_problem

FIELD = "event"  # the one field of a stream entry
JOB_KINDS = ("job_posted", "job_updated", "job_closed")
KINDS = (*JOB_KINDS, "member_profile_updated")
MAX_EVENT_BYTES = 1 << 20  # 1 MiB: a job record is ~1-5 KB; a 10 MB description is refused
# What a job event's record must hold: what the item tower embeds and a slot serves.
JOB_FIELDS = ("job_id", "title", "company", "industry", "city", "country", "lat", "lon",
              "seniority", "employment_type", "remote", "active", "posted_at", "skills",
              "description")  # fmt: skip
MIN_EVENT_TIME = datetime(1970, 1, 1, tzinfo=UTC)  # sinks' timestamps (Feast, ranks) start here
FUTURE_TOLERANCE = timedelta(minutes=5)  # producer clock skew allowed past the receive time
REASON_CHARS = 200  # a reason quoting an exception is cut here
_ENTRY_ID = re.compile(r"[0-9]{1,15}(-[0-9]{1,19})?")  # "<ms>-<seq>" (Redis, Kafka, Pub/Sub)


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
        """The dead letter's fields, always encodable as UTF-8 (a lone surrogate is escaped)."""
        fields = {"entry_id": self.entry_id, "reason": self.reason, "raw": self.raw}
        return {k: v.encode("utf-8", "backslashreplace").decode("utf-8") for k, v in fields.items()}


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


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")  # NaN / Infinity: JSON has neither


def _event_time(value: Any, received: datetime) -> tuple[datetime | None, str | None]:
    """(the event time in UTC, None) or (None, why it is refused)."""
    if not isinstance(value, str):
        return None, f"event_time must be an ISO-8601 string with a UTC offset, got {echo(value)}"
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None, f"event_time must be ISO-8601 with a UTC offset, got {echo(value)}"
    if when.utcoffset() is None:
        return None, f"event_time must carry a UTC offset, got {echo(value)}"
    try:
        when = when.astimezone(UTC)
    except OverflowError:  # "0001-01-01T00:00:00+05:00" is before year 1 in UTC
        return None, f"event_time {echo(value)} is out of range in UTC"
    if when < MIN_EVENT_TIME:
        return None, f"event_time {echo(value)} is before {MIN_EVENT_TIME.isoformat()}"
    if when > received + FUTURE_TOLERANCE:
        ahead = timedelta(seconds=round((when - received).total_seconds()))
        return None, (
            f"event_time {echo(value)} is {ahead} after the event was received "
            f"({received.isoformat(timespec='seconds')}); at most {FUTURE_TOLERANCE} ahead"
        )
    return when, None


def _header(
    entry_id: str, fields: Mapping[Any, Any], received: datetime
) -> tuple[dict[str, Any] | None, str | None]:
    """(the event's JSON body, None) or (None, why it is unreadable)."""
    if not _ENTRY_ID.fullmatch(entry_id):
        return None, f"entry id must be '<ms>-<seq>', got {echo(entry_id)}"
    if not isinstance(fields, Mapping):
        return None, f"entry fields must be a mapping, got {type(fields).__name__}"
    raw = next((v for k, v in fields.items() if as_text(k) == FIELD), None)
    if raw is None:
        return (
            None,
            f"entry has no '{FIELD}' field (fields: {sorted(as_text(k) for k in fields)[:5]})",
        )
    if len(raw) > MAX_EVENT_BYTES:
        return None, f"event is {len(raw)} bytes, over the {MAX_EVENT_BYTES} byte limit"
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        return None, f"not JSON: {type(err).__name__}: {err}"[:REASON_CHARS]
    if not isinstance(body, dict):
        return None, f"event must be a JSON object, got {type(body).__name__}"
    try:  # what every store keeps: UTF-8 text (no lone "\ud800"), finite numbers (no 1e999)
        json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError as err:
        return None, f"event text is not valid Unicode: {err}"
    except ValueError as err:
        return None, f"event holds a number out of range: {err}"
    kind = body.get("kind")
    if kind not in KINDS:
        return None, f"kind must be one of {KINDS}, got {echo(kind)}"
    entity = body.get("id")
    why = id_problem(entity, "id")
    if why is not None:
        return None, why
    when, why = _event_time(body.get("event_time"), received)
    if when is None:
        return None, why
    record = body.get("record")
    if kind == "job_closed":
        return {**body, "event_time": when, "record": None}, None
    if not isinstance(record, dict):
        return None, f"{kind} needs a 'record' object, got {echo(record)}"
    key = "job_id" if kind in JOB_KINDS else "member_id"
    if record.setdefault(key, entity) != entity:
        return None, f"record.{key} {echo(record[key])} differs from the event id {entity}"
    return {**body, "event_time": when}, None


def _raw(fields: Any) -> str:
    """A bounded echo of an entry's event text (or of the entry, when it has none)."""
    try:
        raw = next((v for k, v in fields.items() if as_text(k) == FIELD), None)
        return echo(as_text(raw)) if raw is not None else echo(as_text(fields))
    except Exception:  # noqa: BLE001 -- an echo must never fail the read
        return f"<{type(fields).__name__}>"


def decode(
    entries: Iterable[tuple[Any, Mapping[Any, Any]]], received: datetime | None = None
) -> tuple[list[Event], list[BadEvent]]:
    """Stream entries ``(entry id, fields)`` -> (checked events in entry order, bad entries
    with their reasons). ``received``: when the entries were read (default: now; the bound of
    future event times). Job and profile records are checked as batches by the record
    contract, so one bad record never stops the rest; nothing one entry holds makes this
    raise (module docstring)."""
    now = received or datetime.now(UTC)
    heads: list[tuple[str, dict[str, Any]]] = []
    bad: list[BadEvent] = []
    for entry_id, fields in entries:
        eid = as_text(entry_id)
        try:
            body, why = _header(eid, fields, now)
        except Exception as err:  # noqa: BLE001 -- whatever one entry breaks is its dead letter
            body, why = None, f"unreadable event: {type(err).__name__}: {err}"[:REASON_CHARS]
        if body is None:
            bad.append(BadEvent(eid, str(why), _raw(fields)))
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
    """entry id -> why its record breaks the contract, for job and profile records. A check
    that raises on a batch is run again record by record: the record it raises on alone is
    refused with the exception, the others are checked as usual."""
    out: dict[str, str] = {}
    for kinds, fields, check, key in (
        (("job_posted", "job_updated"), JOB_FIELDS, check_jobs, "job_id"),
        (("member_profile_updated",), ("member_id", *PROFILE_FIELDS), check_members, "member_id"),
    ):
        rows = [(eid, b["record"]) for eid, b in heads if b["kind"] in kinds]
        for eid, record in rows:
            missing = [f for f in fields if f not in record]
            if missing:
                out[eid] = f"record lacks {missing}"
        ok = [(eid, r) for eid, r in rows if eid not in out]
        if not ok:
            continue
        try:
            out.update(_check_records(ok, fields, check, key))
        except Exception:  # noqa: BLE001 -- isolate the record the check raises on
            for one in ok:
                try:
                    out.update(_check_records([one], fields, check, key))
                except Exception as err:  # noqa: BLE001
                    why = f"record check failed: {type(err).__name__}: {err}"
                    out[one[0]] = why[:REASON_CHARS]
    return out


def _check_records(
    ok: list[tuple[str, dict[str, Any]]], fields: tuple[str, ...], check: Any, key: str
) -> dict[str, str]:
    out: dict[str, str] = {}
    frame = pd.DataFrame([r for _, r in ok], index=range(len(ok)))
    # The ids were checked with the event (``_header``). Several events of one entity in a
    # read are no fault (``latest`` decides), and a repeated id must not hide the record's
    # other problems from the check: it sees each record under an id of its own.
    frame[key] = range(1, len(frame) + 1)  # ids hold the id contract (>= 1)
    if "posted_at" in frame:
        given = frame["posted_at"]
        frame["posted_at"] = pd.to_datetime(given, utc=True, errors="coerce", format="ISO8601")
        for row in (frame["posted_at"].isna() & given.notna()).to_numpy().nonzero()[0]:
            out[ok[row][0]] = f"record.posted_at: not an ISO-8601 time, got {echo(given.iloc[row])}"
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
    if not _ENTRY_ID.fullmatch(entry_id):
        raise ValueError(f"entry id must be '<ms>-<seq>', got {echo(entry_id)}")
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def time_key(when: datetime) -> str:
    """A UTC time as 20 characters that sort like the times (microseconds since the epoch;
    an earlier time, even before the epoch, always sorts lower)."""
    micros = (when - _EPOCH) // timedelta(microseconds=1)
    return f"{micros:020d}" if micros >= 0 else f"-{10**19 + micros:019d}"  # "-" < "0"


def rank(event: Event) -> str:
    """The event's place in "last event time wins" as a string that sorts like the pair
    (event_time, entry order): what idempotent sinks store per entity and compare."""
    ms, seq = entry_order(event.entry_id)
    return f"{time_key(event.event_time)}-{ms:015d}-{seq:019d}"
