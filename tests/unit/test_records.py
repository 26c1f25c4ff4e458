"""The record contract every write boundary enforces (ebr.data.records): each kind of bad value
is refused with its row and field named, good rows go on, and nullable fields stay null."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ebr.data.records import RecordError, check_jobs, check_members, require_valid


def _jobs(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "job_id": np.arange(1, n + 1, dtype=np.int64),
            "title": [f"Nurse {i}" for i in range(n)],
            "company": "Acme",
            "city": "Berlin",
            "country": "DE",
            "lat": 52.5,
            "lon": 13.4,
            "remote": False,
            "active": True,
            "skills": [["care"]] * n,
            "description": "Cares for patients.",
            "posted_at": pd.Timestamp("2026-10-01", tz="UTC"),
        }
    )


BAD_JOBS = [  # (column, bad value, field named in the rejection)
    ("lat", 200.0, "lat"),
    ("lat", -90.5, "lat"),
    ("lon", 180.5, "lon"),
    ("lon", float("inf"), "lon"),
    ("lat", float("-inf"), "lat"),
    ("title", None, "title"),
    ("title", "   ", "title"),
    ("title", 42, "title"),
    ("city", 7, "city"),
    ("company", ["a"], "company"),
    ("remote", None, "remote"),
    ("remote", "yes", "remote"),
    ("active", 1.5, "active"),
    ("skills", "python", "skills"),
    ("skills", [1, 2], "skills"),
    ("posted_at", "not a date", "posted_at"),
    ("job_id", -1, "job_id"),
    ("job_id", "7", "job_id"),
    ("description", "x" * 100_001, "description"),
]


@pytest.mark.parametrize(("column", "value", "field"), BAD_JOBS)
def test_each_bad_job_value_is_rejected_naming_row_and_field(column, value, field) -> None:
    df = _jobs().astype({column: object})
    df.at[1, column] = value
    good, rejected = check_jobs(df)
    assert [r.row for r in rejected] == [1] and rejected[0].field == field
    assert good["job_id"].tolist() == [1, 3]  # the good rows go on
    with pytest.raises(RecordError, match=rf"row 1 .*{field}"):
        require_valid((good, rejected), "slot items")
    assert len(str(RecordError("x", rejected))) < 400  # a bad value is echoed, bounded


@pytest.mark.parametrize("missing", [("lat",), ("lon",)])
def test_half_a_location_is_rejected_but_no_location_is_a_valid_null(missing) -> None:
    df = _jobs().astype({"lat": object, "lon": object})
    for col in missing:
        df.at[0, col] = None
    df.at[2, "lat"], df.at[2, "lon"] = None, np.nan  # both null: location unknown
    good, rejected = check_jobs(df)
    assert [(r.row, r.field) for r in rejected] == [(0, missing[0])]
    assert good["job_id"].tolist() == [2, 3]
    assert np.isnan(good.loc[2, "lat"]) and np.isnan(good.loc[2, "lon"])


def test_nullable_display_fields_pass_as_null() -> None:
    df = _jobs().astype(object)
    for col in ("company", "city", "country", "skills", "posted_at"):
        df.at[0, col] = None
    good, rejected = check_jobs(df)
    assert not rejected and len(good) == 3


def test_longitude_minus_180_is_stored_as_180() -> None:
    df = _jobs().assign(lon=[-180.0, 180.0, -179.5])
    good, _ = check_jobs(df)
    assert good["lon"].tolist() == [180.0, 180.0, -179.5]


def test_missing_required_column_rejects_every_row() -> None:
    _, rejected = check_jobs(_jobs().drop(columns="job_id"))
    assert len(rejected) == 3 and {r.field for r in rejected} == {"job_id"}


def test_repeated_id_keeps_the_last() -> None:
    df = pd.concat([_jobs(2), _jobs(1)], ignore_index=True)
    good, rejected = check_jobs(df)
    assert [r.row for r in rejected] == [0] and good.index.tolist() == [1, 2]


@pytest.mark.parametrize(
    ("column", "value"),
    [("max_commute_km", -5.0), ("max_commute_km", 1e9), ("headline", 3), ("open_to_remote", "y")],
)
def test_bad_member_values(column, value) -> None:
    df = pd.DataFrame(
        {"member_id": [1, 2], "headline": "Nurse", "lat": 1.0, "lon": 2.0, "max_commute_km": 30.0}
    ).astype(object)
    df["open_to_remote"] = [True, None]
    df.at[0, column] = value
    good, rejected = check_members(df)
    assert [(r.row, r.field) for r in rejected] == [(0, column)]
    assert good["member_id"].tolist() == [2]


def test_one_record_as_a_one_row_frame() -> None:
    good, why = check_jobs(pd.DataFrame([{"job_id": 5, "title": "t", "lat": 95.0, "lon": 0.0}]))
    assert good.empty and len(why) == 1 and why[0].field == "lat" and why[0].id == 5
    good, why = check_members(pd.DataFrame([{"member_id": 5, "lat": None, "lon": None}]))
    assert not why and good.iloc[0]["member_id"] == 5


def test_an_unreadable_id_equal_to_a_real_one_does_not_refuse_it() -> None:
    """True == 1 == 1.0 in Python: only readable ids can repeat each other."""
    df = pd.concat([_jobs(1)] * 3, ignore_index=True).astype({"job_id": object})
    df.at[1, "job_id"], df.at[2, "job_id"] = True, 1.0
    good, rejected = check_jobs(df)
    assert good.index.tolist() == [0] and [r.row for r in rejected] == [1, 2]
    assert {r.field for r in rejected} == {"job_id"}


@pytest.mark.parametrize("column", ["job_id", "lat", "max_commute_km"])
def test_a_5000_digit_int_is_rejected_with_a_short_message(column) -> None:
    huge = 10**5000  # repr() of it raises in Python 3.11: the message must not call it
    if column == "max_commute_km":
        df = pd.DataFrame({"member_id": [1, 2], "max_commute_km": [30.0, 30.0]}).astype(object)
        df.at[0, column] = huge
        _, rejected = check_members(df)
    else:
        df = _jobs(2).astype({column: object})
        df.at[0, column] = huge
        _, rejected = check_jobs(df)
    assert [(r.row, r.field) for r in rejected] == [(0, column)]
    assert len(str(rejected[0])) < 200
