"""Record contracts: what every write boundary checks before a job or a member profile is kept.

Readers (the attribute index, the featurizers, the HTTP response schema) rely on these rules;
writers (slot build, live upserts, Beam inputs, Feast publish, log replay) enforce them with
``check_jobs`` / ``check_members``, which split a batch into the rows that hold and one
``Rejected`` per bad row naming the row, its id and the field. One null policy from storage to
response:

==================  =========================================  ===================================
column              rule                                       a null means
==================  =========================================  ===================================
job_id, member_id   integer >= 1 (ebr.ids), required          (never null)
title               non-empty string, required                 (never null)
remote, active      boolean, required (jobs)                   (never null)
lat, lon            finite, |lat| <= 90, |lon| <= 180, both    location unknown: no geo filter
                    or neither; lon -180 is stored as 180      matches, features carry a has-
                                                               location flag of 0
other text columns  string or null (<= MAX_TEXT chars)         field unknown: term filters never
                                                               match, the response shows null
skills              list of strings or null                    no skills
posted_at           timestamp or null                          range filters never match
open_to_remote      boolean or null (members)                  false
max_commute_km      null or finite in [0, 20040] (members)     0 (commute unknown)
==================  =========================================  ===================================

Checks are vectorised over a DataFrame; a single record is checked as a one-row frame.

Size: one rule per field of the job and profile contracts, each with its message; split by
record kind it would repeat the shared checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd

from ebr.ids import MAX_ID, MIN_ID  # one id contract with the stream and the API

MAX_TEXT = 100_000  # longer than any real job description; bounds featurizer and log work
MAX_KM = 20_040.0  # half the Earth's circumference
JOB_TEXT = ("description", "company", "industry", "seniority", "employment_type", "city", "country")
MEMBER_TEXT = ("headline", "seniority", "city", "country", "preferred_employment_type")
UNIT_TOLERANCE = 1e-3  # |norm - 1| above this is a broken embedding, not float32 rounding
ECHO_CHARS = 60  # a rejection echoes at most this much of the bad value


@dataclass(frozen=True)
class Rejected:
    """One bad record: its position in the batch, its id when readable, the field and why."""

    row: int
    key: str  # "job_id" or "member_id"
    id: int | None
    field: str
    reason: str

    def __str__(self) -> str:
        who = f"{self.key}={self.id}" if self.id is not None else f"{self.key} unreadable"
        return f"row {self.row} ({who}): {self.field}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {"row": self.row, self.key: self.id, "field": self.field, "reason": self.reason}


class RecordError(ValueError):
    """A write refused because of bad records; ``rejected`` lists every one."""

    def __init__(self, what: str, rejected: Sequence[Rejected]) -> None:
        more = f" (and {len(rejected) - 1} more)" if len(rejected) > 1 else ""
        super().__init__(f"{what}: {len(rejected)} bad record(s); first: {rejected[0]}{more}")
        self.rejected = list(rejected)


def echo(value: Any) -> str:
    """A bounded description of an untrusted value for a message (never the whole value)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**18:
        return f"<{value.bit_length()}-bit int>"  # repr of a huge int is slow, then refused
    if isinstance(value, str | int | float | bool) or value is None:
        text = repr(value)
    else:
        text = f"<{type(value).__name__}>"
    cut = text[:ECHO_CHARS] + "..." if len(text) > ECHO_CHARS else text
    return cut


class _Batch:
    """Collects the first problem of each row while the column checks run."""

    def __init__(self, df: pd.DataFrame, key: str) -> None:
        self.df, self.key = df, key
        self.bad: dict[int, tuple[str, str]] = {}  # row position -> (field, reason)

    def flag(self, mask: np.ndarray, field: str, why: Any) -> None:
        """Mark rows where ``mask``; ``why`` is a reason or a function of the row's value."""
        for pos in np.flatnonzero(mask).tolist():
            if pos not in self.bad:
                value = self.df[field].iloc[pos] if field in self.df.columns else None
                self.bad[pos] = (field, why(value) if callable(why) else why)

    def rejected(self, ids: pd.Series | None) -> list[Rejected]:
        out = []
        for pos, (field, reason) in sorted(self.bad.items()):
            raw: Any = None if ids is None else ids.iloc[pos]
            readable = isinstance(raw, int | np.integer) and not isinstance(raw, bool | np.bool_)
            # An id beyond int64 is reported as unreadable (printing it would be refused).
            key_id = int(raw) if readable and abs(raw) <= MAX_ID else None
            out.append(Rejected(pos, self.key, key_id, field, reason))
        return out


def _nulls(col: pd.Series) -> np.ndarray:
    return col.isna().to_numpy()


def _check_id(b: _Batch, field: str) -> None:
    col = b.df[field]
    if pd.api.types.is_integer_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        b.flag((col < MIN_ID).to_numpy(), field, lambda v: f"must be >= {MIN_ID}, got {v}")
        return
    ok = col.map(
        lambda v: (
            isinstance(v, int | np.integer)
            and not isinstance(v, bool | np.bool_)
            and MIN_ID <= v <= MAX_ID
        )
    ).to_numpy(bool)
    b.flag(~ok, field, lambda v: f"must be an integer in [{MIN_ID}, {MAX_ID}], got {echo(v)}")


def _each(col: pd.Series, fn: Any, dtype: Any = bool) -> np.ndarray:
    """``fn`` of each value of ``col`` as an array (a plain loop: ``Series.map`` costs more)."""
    return np.fromiter(map(fn, col.tolist()), dtype, count=len(col))


def _check_text(b: _Batch, field: str, required: bool) -> None:
    col = b.df[field]
    null = _nulls(col)
    values = col.tolist()
    n = len(values)
    # Builtin maps, no per-value lambdas: these run on every text column of every batch.
    kind = np.fromiter(map(isinstance, values, repeat(str)), bool, count=n)
    texts = values if kind.all() else [v if k else "" for v, k in zip(values, kind, strict=True)]
    if required:
        b.flag(null, field, "required, got null")
        stripped = np.fromiter(map(len, map(str.strip, texts)), np.int64, count=n)
        b.flag(kind & (stripped == 0), field, "required, got an empty string")
    b.flag(~null & ~kind, field, lambda v: f"must be a string or null, got {echo(v)}")
    long = np.fromiter(map(len, texts), np.int64, count=n) > MAX_TEXT
    b.flag(long, field, f"longer than {MAX_TEXT} characters")


def _is_str_list(v: Any) -> bool:
    if isinstance(v, str) or not isinstance(v, list | tuple | np.ndarray):
        return False
    return all(isinstance(s, str) for s in v)


def _check_skills(b: _Batch) -> None:
    col = b.df["skills"]
    ok = _each(col, lambda v: v is None or _is_str_list(v))
    ok |= _each(col, lambda v: isinstance(v, float) and np.isnan(v))
    b.flag(~ok, "skills", lambda v: f"must be a list of strings or null, got {echo(v)}")


def _numbers(b: _Batch, field: str) -> np.ndarray:
    """float64 [n] of a numeric column (NaN where null); non-numbers are flagged."""
    col = b.df[field]
    if pd.api.types.is_bool_dtype(col.dtype):
        b.flag(np.ones(len(col), bool), field, lambda v: f"must be a number, got {echo(v)}")
        return np.full(len(col), np.nan)
    if pd.api.types.is_numeric_dtype(col.dtype):
        return col.to_numpy(np.float64, na_value=np.nan)

    def num(v: Any) -> float:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return np.nan
        if isinstance(v, int | float | np.integer | np.floating) and not isinstance(
            v, bool | np.bool_
        ):
            try:
                return float(v)
            except OverflowError:  # an int beyond float range: flagged as not finite
                return np.inf
        return np.inf  # flagged below as not a number

    values = np.array([num(v) for v in col.tolist()], np.float64)
    odd = col.map(
        lambda v: (
            not (v is None or isinstance(v, int | float | np.integer | np.floating))
            or isinstance(v, bool | np.bool_)
        )
    ).to_numpy(bool)
    b.flag(odd, field, lambda v: f"must be a number or null, got {echo(v)}")
    return np.where(odd, np.nan, values)


def _check_location(b: _Batch) -> None:
    lat, lon = _numbers(b, "lat"), _numbers(b, "lon")
    for field, vals, lim in (("lat", lat, 90.0), ("lon", lon, 180.0)):
        b.flag(np.isinf(vals), field, "must be finite")
        out = np.isfinite(vals) & (np.abs(vals) > lim)
        b.flag(out, field, lambda v, lim=lim: f"must be within ±{lim:g}, got {echo(v)}")
    half = np.isnan(lat) != np.isnan(lon)
    b.flag(half & np.isnan(lat), "lat", "lat and lon must both be set or both be null")
    b.flag(half & np.isnan(lon), "lon", "lat and lon must both be set or both be null")


def _check_bool(b: _Batch, field: str, required: bool) -> None:
    col = b.df[field]
    if pd.api.types.is_bool_dtype(col.dtype):
        return
    null = _nulls(col)
    ok = _each(col, lambda v: isinstance(v, bool | np.bool_))
    if required:
        b.flag(null, field, "required, got null")
    b.flag(~null & ~ok, field, lambda v: f"must be true or false, got {echo(v)}")


def _check_timestamp(b: _Batch, field: str) -> None:
    col = b.df[field]
    if pd.api.types.is_datetime64_any_dtype(col.dtype):
        return

    def bad(v: Any) -> bool:
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NaT:
            return False
        if not isinstance(v, str | pd.Timestamp | np.datetime64) and not hasattr(v, "isoformat"):
            return True
        try:
            pd.Timestamp(v)
        except (ValueError, TypeError, OverflowError):
            return True
        return False

    b.flag(_each(col, bad), field, lambda v: f"must be a timestamp, got {echo(v)}")


def _finish(df: pd.DataFrame, b: _Batch, key: str) -> tuple[pd.DataFrame, list[Rejected]]:
    rejected = b.rejected(df[key] if key in df.columns else None)
    keep = np.ones(len(df), bool)
    keep[[r.row for r in rejected]] = False
    good = df[keep].copy()
    if key in good.columns and good[key].dtype == object and len(good):
        good[key] = good[key].astype(np.int64)  # every kept id is an integer >= 0
    if "lon" in good.columns and len(good):
        lon = pd.to_numeric(good["lon"])
        good["lon"] = lon.where(lon != -180.0, 180.0)  # one meridian, one stored value
    if "lat" in good.columns and good["lat"].dtype == object:
        good["lat"] = pd.to_numeric(good["lat"])
    return good, rejected


def check_jobs(
    df: pd.DataFrame, required: Iterable[str] = ("job_id",)
) -> tuple[pd.DataFrame, list[Rejected]]:
    """(the rows that hold, normalised; one ``Rejected`` per bad row) of a job batch.

    Only the columns present are checked, plus ``required`` columns that must be present
    (a missing required column rejects every row). ``title``, ``remote`` and ``active`` are
    required *values* whenever the column is there. The index of ``df`` is kept.
    """
    return _check(df, "job_id", tuple(required), _job_rules)


def check_members(
    df: pd.DataFrame, required: Iterable[str] = ("member_id",)
) -> tuple[pd.DataFrame, list[Rejected]]:
    """The same for member profiles (every profile field is nullable)."""
    return _check(df, "member_id", tuple(required), _member_rules)


def _job_rules(b: _Batch) -> None:
    cols = b.df.columns
    if "title" in cols:
        _check_text(b, "title", required=True)
    for field in JOB_TEXT:
        if field in cols:
            _check_text(b, field, required=False)
    if "skills" in cols:
        _check_skills(b)
    for field in ("remote", "active"):
        if field in cols:
            _check_bool(b, field, required=True)
    if "posted_at" in cols:
        _check_timestamp(b, "posted_at")


def _member_rules(b: _Batch) -> None:
    cols = b.df.columns
    for field in MEMBER_TEXT:
        if field in cols:
            _check_text(b, field, required=False)
    if "skills" in cols:
        _check_skills(b)
    if "open_to_remote" in cols:
        _check_bool(b, "open_to_remote", required=False)
    if "max_commute_km" in cols:
        km = _numbers(b, "max_commute_km")
        bad = np.isfinite(km) & ((km < 0) | (km > MAX_KM)) | np.isinf(km)
        b.flag(bad, "max_commute_km", lambda v: f"must be in [0, {MAX_KM:g}] km, got {echo(v)}")


def _check(
    df: pd.DataFrame, key: str, required: tuple[str, ...], rules: Any
) -> tuple[pd.DataFrame, list[Rejected]]:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a DataFrame of records, got {type(df).__name__}")
    b = _Batch(df, key)
    missing = [c for c in dict.fromkeys((key, *required)) if c not in df.columns]
    if missing:
        b.flag(np.ones(len(df), bool), missing[0], "required column is missing")
    if key in df.columns:
        _check_id(b, key)
        # Only among readable ids: True == 1 == 1.0 in Python, so an unreadable id must not
        # make the real job 1 look repeated.
        ok = np.array([pos not in b.bad for pos in range(len(df))], dtype=bool)
        dup = np.zeros(len(df), dtype=bool)
        dup[ok] = df[key][ok].astype(np.int64).duplicated(keep="last").to_numpy()
        b.flag(dup, key, "repeats in the batch (the last one is kept)")
    if "lat" in df.columns and "lon" in df.columns:
        _check_location(b)
    rules(b)
    return _finish(df, b, key)


def vector_problem(vec: np.ndarray, dim: int | None = None) -> str | None:
    """Why ``vec`` (float [dim]) is not a finite unit vector of ``dim`` values, or None."""
    if dim is not None and vec.shape != (dim,):
        return f"has shape {vec.shape}, expected ({dim},)"
    if not np.isfinite(vec).all():
        return f"has {int((~np.isfinite(vec)).sum())} non-finite values"
    norm = float(np.linalg.norm(vec))
    if abs(norm - 1.0) > UNIT_TOLERANCE:
        return f"norm {norm:.4g}, expected a unit vector"
    return None


def require_valid(
    good_and_rejected: tuple[pd.DataFrame, list[Rejected]], what: str
) -> pd.DataFrame:
    """The checked rows, or ``RecordError`` naming the first bad row and field."""
    good, rejected = good_and_rejected
    if rejected:
        raise RecordError(what, rejected)
    return good
