"""ebr.data.tables: which embedding-table rows a publish refuses, and which tables it rejects.

Run: ``pytest -q tests/unit/test_embedding_tables.py``
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ebr.data.tables import (
    PROFILE_FIELDS,
    check_embedding_table,
    check_profiles,
    read_embedding_table,
    read_profiles,
)

DIM = 4


def _unit(seed: int, dim: int = DIM) -> np.ndarray:
    vec = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return vec / np.linalg.norm(vec)


def _table(n: int = 5, key: str = "job_id", version: str = "v1") -> pd.DataFrame:
    return pd.DataFrame(
        {
            key: np.arange(1, n + 1, dtype=np.int64),
            "embedding": [_unit(i) for i in range(n)],
            "model_version": version,
            "event_timestamp": pd.Timestamp("2026-11-30 12:00"),  # naive: read as UTC
        }
    )


def _refused(df: pd.DataFrame, **kw: Any) -> list[tuple[int | None, str, str]]:
    good, refused = check_embedding_table(df, kw.pop("key", "job_id"), "v1", **kw)
    assert len(good) + len(refused) == len(df)
    return [(r.id, r.field, r.reason) for r in refused]


def test_a_clean_table_is_kept_whole_and_normalised() -> None:
    df = _table()
    good, refused = check_embedding_table(df, "job_id", "v1", dim=DIM)
    assert refused == []
    assert list(good["job_id"]) == [1, 2, 3, 4, 5] and good["job_id"].dtype == np.int64
    assert all(v.dtype == np.float32 and v.shape == (DIM,) for v in good["embedding"])
    assert str(good["event_timestamp"].dt.tz) == "UTC"
    assert np.allclose(np.stack(good["embedding"]), np.stack(df["embedding"]))


def test_a_repeated_id_refuses_every_copy() -> None:
    df = _table()
    df.loc[3, "job_id"] = 2
    assert [(i, f) for i, f, _ in _refused(df)] == [(2, "job_id"), (2, "job_id")]


def test_a_null_id_is_refused_and_does_not_blur_the_others() -> None:
    df = _table(key="member_id")
    df["member_id"] = df["member_id"].astype(object)
    df.loc[1, "member_id"] = None
    df.loc[2, "member_id"] = 2**62 + 1  # beyond float64's exact integers
    good, refused = check_embedding_table(df, "member_id", "v1")
    assert [(r.row, r.id, r.field, r.reason) for r in refused] == [
        (1, None, "member_id", "required, got null")
    ]
    assert 2**62 + 1 in set(good["member_id"])


@pytest.mark.parametrize("bad", [-1, "7", 1.5, True])
def test_an_id_that_is_no_integer_in_range_is_refused(bad: object) -> None:
    df = _table().astype({"job_id": object})
    df.at[0, "job_id"] = bad
    [(got, field, reason)] = _refused(df)
    assert (got, field) == (None, "job_id") and "must be an integer" in reason


def test_a_vector_of_another_dim_is_refused() -> None:
    df = _table()
    df.at[1, "embedding"] = _unit(9, DIM + 1)
    assert [(i, f) for i, f, _ in _refused(df)] == [(2, "embedding")]  # table width: DIM
    # The model's dim, when known, wins over the table's: every row is wrong then.
    with pytest.raises(ValueError, match="no valid rows"):
        check_embedding_table(df, "job_id", "v1", dim=DIM + 2)


@pytest.mark.parametrize("bad", [np.nan, np.inf, None])
def test_non_finite_values_are_refused(bad: float | None) -> None:
    df = _table()
    vec: list[float | None] = [float(x) for x in _unit(0)]
    vec[2] = bad
    df.at[3, "embedding"] = vec
    [(got, field, reason)] = _refused(df, dim=DIM)
    assert (got, field) == (4, "embedding") and "non-finite" in reason


def test_a_vector_that_is_not_unit_is_refused() -> None:
    df = _table()
    df.at[0, "embedding"] = _unit(0) * 2
    df.at[1, "embedding"] = np.zeros(DIM, dtype=np.float32)
    df.at[2, "embedding"] = _unit(2) * (1 + 1e-5)  # float32 rounding: kept
    refused = _refused(df, dim=DIM)
    assert [(i, f) for i, f, _ in refused] == [(1, "embedding"), (2, "embedding")]
    assert all("unit vector" in why for _, _, why in refused)


def test_a_null_or_unreadable_embedding_is_refused() -> None:
    df = _table()
    df.at[0, "embedding"] = None
    df.at[4, "embedding"] = "0.5, 0.5, 0.5, 0.5"
    refused = _refused(df)
    assert [(i, f) for i, f, _ in refused] == [(1, "embedding"), (5, "embedding")]
    assert refused[0][2] == "required, got null"


def test_a_null_timestamp_is_refused() -> None:
    df = _table()
    df["event_timestamp"] = df["event_timestamp"].astype(object)
    df.at[2, "event_timestamp"] = None
    assert [(i, f) for i, f, _ in _refused(df)] == [(3, "event_timestamp")]


def test_the_first_problem_of_a_row_is_the_one_reported() -> None:
    df = _table().astype({"job_id": object})
    df.at[0, "job_id"] = None
    df.at[0, "embedding"] = None
    assert _refused(df) == [(None, "job_id", "required, got null")]


@pytest.mark.parametrize("versions", [["v2"], ["v1", "v2"], [None]])
def test_a_table_of_another_model_version_is_rejected_whole(versions: list[str | None]) -> None:
    df = _table(n=len(versions))
    df["model_version"] = versions
    with pytest.raises(ValueError, match="model_version"):
        check_embedding_table(df, "job_id", "v1")


def test_tables_wrong_as_a_whole_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="version must match"):
        check_embedding_table(_table(), "job_id", "latest")
    with pytest.raises(ValueError, match="no rows"):
        check_embedding_table(_table().iloc[:0], "job_id", "v1")
    with pytest.raises(ValueError, match=r"lacks columns \['event_timestamp'\]"):
        check_embedding_table(_table().drop(columns="event_timestamp"), "job_id", "v1")
    every_row_bad = _table()
    every_row_bad["embedding"] = None
    with pytest.raises(ValueError, match="no valid rows; first refused: row 0"):
        check_embedding_table(every_row_bad, "job_id", "v1")
    with pytest.raises(FileNotFoundError, match="embedding table not found"):
        read_embedding_table(tmp_path / "nowhere.parquet", "job_id", "v1")
    _table().drop(columns="model_version").to_parquet(tmp_path / "jobs.parquet")
    with pytest.raises(ValueError, match="lacks columns"):
        read_embedding_table(tmp_path / "jobs.parquet", "job_id", "v1")


def test_a_parquet_table_with_a_null_id_keeps_exact_int64_ids(tmp_path: Path) -> None:
    df = _table(n=3, key="member_id", version="v2")
    df["member_id"] = pd.array([2**62 + 1, None, 3], dtype="Int64")
    df.to_parquet(tmp_path / "members.parquet")
    good, refused = read_embedding_table(tmp_path / "members.parquet", "member_id", "v2", DIM)
    assert list(good["member_id"]) == [2**62 + 1, 3] and good["member_id"].dtype == np.int64
    assert [(r.row, r.field) for r in refused] == [(1, "member_id")]


def test_profiles_follow_the_member_contract_and_carry_the_publish_time(tmp_path: Path) -> None:
    at = datetime(2026, 11, 30, 12, tzinfo=UTC)
    profiles = pd.DataFrame(
        {"member_id": [1, 2, 2], **{f: None for f in PROFILE_FIELDS}, "lat": [95.0, 1.0, 2.0]}
    )
    profiles["lon"] = 3.0
    good, refused = check_profiles(profiles, at)
    assert list(good["member_id"]) == [2] and (good["event_timestamp"] == at).all()
    assert [(r.row, r.field) for r in refused] == [(0, "lat"), (1, "member_id")]
    with pytest.raises(FileNotFoundError, match="member profiles not found"):
        read_profiles(tmp_path / "members.parquet", at)
