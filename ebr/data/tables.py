"""The tables a feature publish reads, checked row by row: embedding tables and member profiles.

An embedding table (``embeddings/<v>/{jobs,members}.parquet``,
``interest/embeddings/<iv>/members.parquet``) has the columns ``<key>, embedding,
model_version, event_timestamp``. One row is refused (a ``Rejected``; the publish lists it as a
dead letter and publishes the rest) for:

- an id that is null, not an integer, or outside [0, 2**63);
- an id that repeats: every copy, since which one is right is unknown;
- an embedding that is null or not a finite unit vector of the model's dim
  (``records.vector_problem``; without a known dim, the table's most common width);
- a null ``event_timestamp``.

A table wrong as a whole raises ``FileNotFoundError`` / ``ValueError`` naming it: no file,
missing columns, a ``model_version`` other than the version published, no rows, no valid row.

Member profiles follow ebr.data.records's member contract (``check_members``).

Run the tests: ``pytest -q tests/unit/test_embedding_tables.py``
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ebr.data.records import (
    MAX_ID,
    MIN_ID,
    UNIT_TOLERANCE,
    Rejected,
    check_members,
    echo,
    vector_problem,
)
from ebr.versions import check_version

EMBEDDING_COLUMNS = ("embedding", "model_version", "event_timestamp")
# The member profile fields published beside the embeddings (Feast view ``member_profile``).
PROFILE_FIELDS = (
    "headline",
    "skills",
    "seniority",
    "city",
    "country",
    "lat",
    "lon",
    "open_to_remote",
    "max_commute_km",
    "preferred_employment_type",
)
NULL = "required, got null"
REPEATED = "repeated: every copy refused (which is right is unknown)"


def _require_columns(path: Path, columns: list[str], what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    missing = sorted(set(columns) - set(pq.read_schema(path).names))
    if missing:
        raise ValueError(f"{path} lacks columns {missing}; expected {columns}")


def read_embedding_table(
    path: Path, key: str, version: str, dim: int | None = None
) -> tuple[pd.DataFrame, list[Rejected]]:
    """``check_embedding_table`` of the parquet file ``path`` (only its needed columns)."""
    columns = [key, *EMBEDDING_COLUMNS]
    _require_columns(Path(path), columns, "embedding table")
    # Nullable Int64 ids: a null id must not turn the column into float64 (ids > 2**53 blur).
    table = pq.read_table(path, columns=columns)
    df = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    return check_embedding_table(df, key, version, dim, what=str(path))


def check_embedding_table(
    df: pd.DataFrame, key: str, version: str, dim: int | None = None, what: str = "table"
) -> tuple[pd.DataFrame, list[Rejected]]:
    """(rows to publish, one ``Rejected`` per row refused) of an embedding table of ``version``.

    ``dim`` is the model's embedding width (None: the table's most common one). Kept rows have
    ``key`` int64, ``embedding`` float32 [dim], ``event_timestamp`` UTC (naive stamps are read
    as UTC, as Feast reads them), ``model_version`` == ``version``; ``what`` names the table in
    errors.
    """
    check_version(version)
    missing = [c for c in (key, *EMBEDDING_COLUMNS) if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; expected {[key, *EMBEDDING_COLUMNS]}")
    if df.empty:
        raise ValueError(f"{what} has no rows")
    versions = list(pd.unique(df["model_version"]))
    if versions != [version]:
        raise ValueError(f"{what} has model_version {versions}; expected only {version!r}")
    if dim is not None and dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    df = df.reset_index(drop=True)
    problems: dict[int, tuple[str, str]] = {}  # row -> (field, reason); the first one counts
    ids = _check_ids(df[key], key, problems)
    vectors = _check_vectors(df["embedding"], dim, problems)
    for row in np.flatnonzero(df["event_timestamp"].isna().to_numpy()).tolist():
        problems.setdefault(row, ("event_timestamp", NULL))
    refused = [
        Rejected(row, key, ids[row], field, why) for row, (field, why) in sorted(problems.items())
    ]
    kept = [row for row in range(len(df)) if row not in problems]
    if not kept:
        raise ValueError(f"{what} has no valid rows; first refused: {refused[0]}")
    good = df.iloc[kept].reset_index(drop=True)
    good[key] = np.array([ids[row] for row in kept], dtype=np.int64)
    good["event_timestamp"] = pd.to_datetime(good["event_timestamp"], utc=True)
    good["embedding"] = [vectors[row] for row in kept]
    return good, refused


def _id(value: Any) -> int | None:
    """The id ``value`` holds (an integer, or a whole float from a pandas NaN upcast), or None."""
    if isinstance(value, bool | np.bool_) or value is None or value is pd.NA:
        return None
    if isinstance(value, int | np.integer):
        return int(value) if MIN_ID <= value <= MAX_ID else None
    if isinstance(value, float | np.floating) and np.isfinite(value) and float(value).is_integer():
        return int(value) if MIN_ID <= value <= MAX_ID else None
    return None


def _check_ids(col: pd.Series, key: str, problems: dict[int, tuple[str, str]]) -> list[int | None]:
    """Readable ids by row (None where not); null, unreadable and repeated ids are flagged."""
    ids = [_id(v) for v in col.tolist()]
    null = col.isna().to_numpy()
    for row, (value, got) in enumerate(zip(col.tolist(), ids, strict=True)):
        if null[row]:
            problems.setdefault(row, (key, NULL))
        elif got is None:
            problems.setdefault(row, (key, f"must be an integer in [0, 2**63), got {echo(value)}"))
    readable = pd.Series(pd.array(ids, dtype="Int64"))
    repeated = readable.duplicated(keep=False).to_numpy() & readable.notna().to_numpy()
    for row in np.flatnonzero(repeated).tolist():
        problems.setdefault(row, (key, REPEATED))
    return ids


def _as_vector(value: Any) -> np.ndarray | str | None:
    """float64 [n] of one embedding cell, None when null, or why it is no list of numbers."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    try:
        vec = np.asarray(value, dtype=np.float64)  # a null element becomes NaN: non-finite
    except (TypeError, ValueError):
        return f"must be a list of numbers, got {echo(value)}"
    return vec if vec.ndim == 1 else f"must be a list of numbers, got shape {vec.shape}"


def _check_vectors(
    col: pd.Series, dim: int | None, problems: dict[int, tuple[str, str]]
) -> dict[int, np.ndarray]:
    """float32 [dim] vector of each row that holds a usable one; the others are flagged."""
    cells = [_as_vector(v) for v in col.tolist()]
    vectors = {row: c for row, c in enumerate(cells) if isinstance(c, np.ndarray)}
    for row, cell in enumerate(cells):
        if not isinstance(cell, np.ndarray):
            problems.setdefault(row, ("embedding", NULL if cell is None else cell))
    if dim is None:
        widths = np.array([len(v) for v in vectors.values()], dtype=np.int64)
        dim = int(np.bincount(widths).argmax()) if len(widths) else 0
    # One vectorised pass over the rows of the right width; vector_problem words the reasons.
    sized = [row for row, v in vectors.items() if len(v) == dim]
    ok: set[int] = set()
    if sized:
        mat = np.stack([vectors[row] for row in sized])  # [n, dim] float64
        finite = np.isfinite(mat).all(axis=1)
        norms = np.linalg.norm(np.where(np.isfinite(mat), mat, 0.0), axis=1)
        unit = finite & (np.abs(norms - 1.0) <= UNIT_TOLERANCE)
        ok = {row for row, good in zip(sized, unit.tolist(), strict=True) if good}
    for row in [row for row in vectors if row not in ok]:
        why = vector_problem(vectors.pop(row), dim) or "is not a finite unit vector"
        problems.setdefault(row, ("embedding", why))
    return {row: v.astype(np.float32) for row, v in vectors.items()}


def read_profiles(path: Path, published_at: datetime) -> tuple[pd.DataFrame, list[Rejected]]:
    """``check_profiles`` of the member table ``path`` (``member_id`` + ``PROFILE_FIELDS``)."""
    columns = ["member_id", *PROFILE_FIELDS]
    _require_columns(Path(path), columns, "member profiles")
    return check_profiles(pd.read_parquet(path, columns=columns), published_at)


def check_profiles(df: pd.DataFrame, published_at: datetime) -> tuple[pd.DataFrame, list[Rejected]]:
    """(profiles to publish, one ``Rejected`` per profile refused) by ebr.data.records's
    member contract (a repeated member_id keeps the last row). Profiles carry no timestamp:
    ``event_timestamp`` is ``published_at``."""
    good, rejected = check_members(df)
    good = good.reset_index(drop=True)
    good["event_timestamp"] = pd.Timestamp(published_at)
    return good, rejected
