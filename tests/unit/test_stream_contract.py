"""The stream's event contract (``ebr.stream.events``): no entry makes ``decode`` raise (each
poison entry is its own dead letter with a reason and the rest flow), event times are bounded
(1970 .. received + FUTURE_TOLERANCE) and ordered right for every time accepted, and ids follow
the one id contract the HTTP API uses (``ebr.ids``)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

import ebr.stream.events as events_mod
from ebr.data.tables import PROFILE_FIELDS
from ebr.ids import MAX_ID, MIN_ID, id_problem
from ebr.stream.events import (
    FIELD,
    FUTURE_TOLERANCE,
    MIN_EVENT_TIME,
    decode,
    encode,
    entry_order,
    latest,
    rank,
    time_key,
)
from serving.schemas import SearchRequest

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)  # the receive time of every decode here


def job(job_id: int, **changes: Any) -> dict[str, Any]:
    record = {"job_id": job_id, "title": "Data engineer", "company": "Acme", "industry": "tech",
              "city": "Berlin", "country": "DE", "lat": 52.5, "lon": 13.4, "seniority": "mid",
              "employment_type": "full_time", "remote": False, "active": True,
              "posted_at": "2026-11-30T09:00:00+00:00", "skills": ["python", "sql"],
              "description": "Build pipelines."}  # fmt: skip
    return {**record, **changes}


PROFILE = {f: None for f in PROFILE_FIELDS} | {"headline": "nurse", "skills": ["care"]}


def raw(body: Any) -> dict[str, str]:
    return {FIELD: body if isinstance(body, str) else json.dumps(body)}


def closed(when: Any, entity: Any = 7) -> dict[str, str]:
    return raw({"kind": "job_closed", "id": entity, "event_time": when})


# name -> (entry fields, a phrase of its dead letter's reason)
POISON: dict[str, tuple[Any, str]] = {
    "year 1 east of UTC": (closed("0001-01-01T00:00:00+05:00"), "out of range in UTC"),
    "year 1 with a seconds offset": (closed("0001-01-01T00:00:00+00:00:01"), "out of range"),
    "year 9999 west of UTC": (closed("9999-12-31T23:59:59-05:00"), "out of range in UTC"),
    "year 9999 in UTC": (closed("9999-12-31T23:59:59.999999+00:00"), "after the event was"),
    "year 1 in UTC": (closed("0001-01-01T00:00:00+00:00"), "before 1970"),
    "before the epoch": (closed("1969-12-31T23:59:59.999999Z"), "before 1970"),
    "offset of a day": (closed("2026-12-07T00:00:00+24:00"), "ISO-8601"),
    "hour 24": (closed("2026-12-07T24:00:00Z"), "ISO-8601"),
    "time as a number": (closed(1_765_000_000), "ISO-8601 string"),
    "time as a list": (closed(["2026-12-07"]), "ISO-8601 string"),
    "time without offset": (closed("2026-12-07T10:00:00"), "UTC offset"),
    "id 0": (closed(NOW.isoformat(), 0), "id must be an integer in [1,"),
    "negative id": (closed(NOW.isoformat(), -3), "id must be"),
    "id past int64": (closed(NOW.isoformat(), 2**63), "id must be"),
    "huge id": (closed(NOW.isoformat(), 10**4000), "id must be"),
    "id as float": (closed(NOW.isoformat(), 7.0), "id must be"),
    "id as bool": (closed(NOW.isoformat(), True), "id must be"),
    "id as string": (closed(NOW.isoformat(), "7"), "id must be"),
    "too many digits": (raw('{"kind": "job_closed", "id": ' + "9" * 5000 + "}"), "not JSON"),
    "NaN": (raw('{"kind": "job_closed", "id": NaN, "event_time": "x"}'), "not JSON"),
    "Infinity in a record": (
        raw('{"kind": "job_posted", "id": 7, "record": {"x": 1e999}}'),
        "number out of range",
    ),  # fmt: skip
    "nested too deep": (raw("[" * 200_000), "not JSON"),
    "lone surrogate": (raw('{"kind": "job_closed\\ud800", "id": 7}'), "not valid Unicode"),
    "invalid UTF-8 bytes": ({FIELD: b'{"kind": "\xff\xfe"}'}, "not JSON"),
    "fields not a mapping": (["event", "{}"], "must be a mapping"),
    "event field is a number": ({FIELD: 5}, "unreadable event"),
    "record a list": (
        raw({"kind": "job_posted", "id": 7, "event_time": NOW.isoformat(), "record": [1, 2]}),
        "needs a 'record' object",
    ),  # fmt: skip
    "record id differs": (encode("job_posted", 7, NOW, job(8)), "differs from the event id"),
    "posted_at year 1 east": (
        encode("job_posted", 7, NOW, job(7, posted_at="0001-01-01T00:00:00+05:00")),
        "posted_at",
    ),  # fmt: skip
    "posted_at 9999 west": (
        encode("job_posted", 7, NOW, job(7, posted_at="9999-12-31T23:59:59-05:00")),
        "posted_at",
    ),  # fmt: skip
    "lat huge": (encode("job_posted", 7, NOW, job(7, lat=1e308)), "record.lat"),
    "lat nested": (encode("job_posted", 7, NOW, job(7, lat={"deg": 1})), "record.lat"),
    "skills a number": (encode("job_posted", 7, NOW, job(7, skills=5)), "record.skills"),
    "profile lat huge": (
        encode("member_profile_updated", 3, NOW, PROFILE | {"lat": -1e300}),
        "record.lat",
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", list(POISON))
def test_a_poison_entry_is_its_own_dead_letter_and_the_rest_flow(name: str) -> None:
    fields, phrase = POISON[name]
    entries = [
        ("100-0", encode("job_posted", 1, NOW, job(1))),
        ("100-1", fields),
        ("100-2", encode("job_closed", 2, NOW)),
    ]
    events, bad = decode(entries, received=NOW)
    assert [e.entry_id for e in events] == ["100-0", "100-2"], (name, bad)
    assert [b.entry_id for b in bad] == ["100-1"] and phrase in bad[0].reason, (name, bad)
    for value in bad[0].to_fields().values():  # a dead letter can always be written
        value.encode("utf-8")


@pytest.mark.parametrize("entry_id", ["abc", "-1-5", "1-", "12345678901234567890-0", "٣-0", ""])
def test_an_unreadable_entry_id_is_a_dead_letter_not_an_exception(entry_id: str) -> None:
    entries = [(entry_id, encode("job_closed", 2, NOW)), ("5-0", encode("job_closed", 3, NOW))]
    events, bad = decode(entries, received=NOW)
    assert [e.entity_id for e in events] == [3]
    assert len(bad) == 1 and "entry id must be" in bad[0].reason
    with pytest.raises(ValueError, match="entry id"):
        entry_order(entry_id)


def test_a_record_check_that_raises_refuses_only_that_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = events_mod.check_jobs

    def check(frame: Any, required: Any) -> Any:
        if (frame["title"] == "boom").any():
            raise OverflowError("the check itself broke")
        return real(frame, required=required)

    monkeypatch.setattr(events_mod, "check_jobs", check)
    entries = [(f"9-{i}", encode("job_posted", 10 + i, NOW, job(10 + i, title=t)))
               for i, t in enumerate(["ok", "boom", "fine", "x"])]  # fmt: skip
    entries.append(("9-9", encode("job_posted", 20, NOW, job(20, lat="north"))))
    events, bad = decode(entries, received=NOW)
    assert [e.entity_id for e in events] == [10, 12, 13]
    reasons = {b.entry_id: b.reason for b in bad}
    assert "record check failed: OverflowError" in reasons["9-1"]
    assert "record.lat" in reasons["9-9"]  # the others are still checked as usual


@pytest.mark.parametrize(
    "ahead",
    [timedelta(days=365 * 7000), timedelta(days=1), FUTURE_TOLERANCE + timedelta(seconds=1)],
)
@pytest.mark.parametrize("offset", [0, 14, -12])
def test_an_event_dated_past_the_tolerance_is_refused(ahead: timedelta, offset: int) -> None:
    when = (NOW + ahead).astimezone(timezone(timedelta(hours=offset)))
    body = {"kind": "job_closed", "id": 7, "event_time": when.isoformat()}
    events, bad = decode([("1-0", raw(body))], received=NOW)
    assert not events and "after the event was received" in bad[0].reason, bad
    assert str(FUTURE_TOLERANCE) in bad[0].reason


@pytest.mark.parametrize(
    "when",
    [NOW + FUTURE_TOLERANCE, NOW + timedelta(minutes=4), NOW, NOW - timedelta(days=3000),
     MIN_EVENT_TIME],
)  # fmt: skip
@pytest.mark.parametrize("offset", [0, 5.5, 14, -12])
def test_every_time_in_the_bounds_is_accepted_in_utc(when: datetime, offset: float) -> None:
    local = when.astimezone(timezone(timedelta(hours=offset))).isoformat()
    events, bad = decode([("1-0", raw({"kind": "job_closed", "id": 7, "event_time": local}))],
                         received=NOW)  # fmt: skip
    assert not bad and events[0].event_time == when and events[0].event_time.tzinfo == UTC


def test_the_bound_follows_the_receive_time() -> None:
    entry = ("1-0", encode("job_closed", 7, NOW + timedelta(hours=1)))
    assert decode([entry], received=NOW)[0] == []
    assert len(decode([entry], received=NOW + timedelta(minutes=56))[0]) == 1
    assert decode([("1-0", encode("job_closed", 7, datetime.now(UTC)))])[0]  # default: the clock


def test_ranks_order_every_accepted_time_like_the_times() -> None:
    """Offsets, sub-second precision, 1970 to the tolerance: the stored rank (a string) sorts
    exactly like (UTC time, entry order), and ``latest`` picks the top rank."""
    rng = random.Random(20)
    span = (NOW + FUTURE_TOLERANCE - MIN_EVENT_TIME).total_seconds()
    picks = [MIN_EVENT_TIME, NOW + FUTURE_TOLERANCE, MIN_EVENT_TIME + timedelta(microseconds=1)]
    picks += [MIN_EVENT_TIME + timedelta(seconds=rng.uniform(0, span)) for _ in range(400)]
    picks += [picks[5]] * 3  # ties: the later entry wins
    entries = []
    for i, t in enumerate(picks):
        hours = rng.choice([0, 1, 5.5, 9.75, 14, -3.5, -12, 23.99])
        text = t.astimezone(timezone(timedelta(hours=hours))).isoformat()
        entries.append((f"{1000 + rng.randrange(50)}-{i}", closed(text, 7)))
    events, bad = decode(entries, received=NOW)
    assert not bad and len(events) == len(picks)
    by_time = sorted(events, key=lambda e: (e.event_time, entry_order(e.entry_id)))
    assert sorted(events, key=rank) == by_time
    assert latest(events) == [by_time[-1]]


def test_time_keys_sort_like_times_before_and_after_the_epoch() -> None:
    times = [datetime(1, 1, 1, tzinfo=UTC), datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC),
             datetime(1970, 1, 1, tzinfo=UTC), datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
             datetime(2026, 12, 7, tzinfo=UTC), datetime.max.replace(tzinfo=UTC)]  # fmt: skip
    keys = [time_key(t) for t in times]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert {len(k) for k in keys} == {20}


@pytest.mark.parametrize(
    "value", [0, -1, 1, 2, 4001, MAX_ID, MAX_ID + 1, True, False, 1.0, "7", [3], 10**30]
)
def test_the_stream_and_the_api_accept_the_same_member_ids(value: Any) -> None:
    body = {"kind": "member_profile_updated", "id": value, "event_time": NOW.isoformat(),
            "record": PROFILE | {"member_id": value}}  # fmt: skip
    events, _ = decode([("1-0", raw(body))], received=NOW)
    try:
        SearchRequest.model_validate({"member_id": value, "query": "nurse"})
        api = True
    except ValidationError:
        api = False
    assert bool(events) == api == (id_problem(value) is None), (value, events, api)


@pytest.mark.parametrize("value", [0, -1, MAX_ID + 1, True, 2.0, "12"])
def test_job_ids_follow_the_same_contract(value: Any) -> None:
    events, bad = decode([("1-0", closed(NOW.isoformat(), value)),
                          ("1-1", encode("job_posted", MIN_ID, NOW, job(MIN_ID))),
                          ("1-2", encode("job_closed", MAX_ID, NOW))], received=NOW)  # fmt: skip
    assert [e.entity_id for e in events] == [MIN_ID, MAX_ID]
    assert "id must be an integer in [1, 9223372036854775807]" in bad[0].reason
