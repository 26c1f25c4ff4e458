"""Pure array functions behind ``ebr.index.live``: checking upsert batches against a slot,
exact search of the delta, and merging it with the snapshot's results.

They take arrays, not a ``LiveSlot``, so each is testable on its own and holds no lock: the
caller passes one consistent state (``live._View``).
"""

from __future__ import annotations

from dataclasses import replace

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa

from ebr.data.records import check_jobs, require_valid
from ebr.index.build import NORM_TOLERANCE
from ebr.index.wal import UPSERT, Record

FEW_DEAD = 1024  # superseded delta positions up to which the delta search over-fetches
SCORE_CELLS = 1 << 22  # cap on the [queries, delta] score matrix of one exact-search chunk (16 MiB)


def records_to_table(records: pd.DataFrame, items: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Validate an upsert batch against a slot's ``items``; -> Arrow table in the slot's schema.

    Args:
        records: m rows: ``job_id`` (unique, int >= 0) and exactly the columns of ``items``.
        items: the snapshot's items (column names and dtypes are the contract).
        schema: ``items``' Arrow schema, so every logged batch concatenates with the others.
    """
    if not isinstance(records, pd.DataFrame) or records.empty:
        raise ValueError("records must be a non-empty DataFrame with job_id + item columns")
    columns = list(items.columns)
    unknown = sorted(set(records.columns) - set(columns))
    missing = [c for c in columns if c not in records.columns]
    if unknown or missing:
        raise ValueError(
            f"records columns must be the slot's item columns {columns}: "
            f"unknown columns {unknown}, missing columns {missing}"
        )
    # What every reader of the log relies on (ranges, nulls, types), checked before the
    # record is made durable: a bad row accepted here would poison every later replay.
    # It also refuses ids that are not integers >= 0 or repeat in the batch.
    records = require_valid(check_jobs(records, required=columns), "upsert")
    frame = records[columns].reset_index(drop=True)
    for col, dtype in items.dtypes.items():
        col_ok = pd.api.types.is_bool_dtype(frame[col]) or all(
            isinstance(v, bool | np.bool_) for v in frame[col].tolist()
        )
        if pd.api.types.is_bool_dtype(dtype) and not col_ok:
            # astype(bool) would turn any object into its truthiness, silently.
            raise ValueError(f"column {col!r} must be bool like the slot's, got {frame[col].dtype}")
        try:  # the slot's dtypes, so the delta concatenates with the snapshot at compaction
            frame[col] = frame[col].astype(dtype)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"column {col!r} does not fit the slot's {dtype}: {exc}") from exc
    try:
        table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"records do not fit the slot's item schema: {exc}") from exc
    # Pandas metadata would be repeated in every logged batch (~0.8 KB); the dtypes are
    # restored from the snapshot's items when the delta is read back.
    return table.replace_schema_metadata(None)


def admit_record(rec: Record, columns: list[str]) -> tuple[Record, list[str]]:
    """(``rec`` without its bad rows, one reason per dropped row) for a record read back from
    a log: the rows ``records_to_table`` would refuse, and vectors that are not finite unit
    rows. Deletes pass through."""
    if rec.kind != UPSERT or rec.items is None or rec.vectors is None:
        return rec, []
    _, rejected = check_jobs(rec.items.to_pandas(), required=columns)
    bad = {r.row: str(r) for r in rejected}
    norms = np.linalg.norm(rec.vectors, axis=1)
    odd = ~np.isfinite(norms) | (np.abs(norms - 1.0) > NORM_TOLERANCE)
    for row in np.flatnonzero(odd).tolist():
        bad.setdefault(row, f"row {row}: vector is not a finite unit vector")
    if not bad:
        return rec, []
    keep = np.ones(len(rec.job_ids), dtype=bool)
    keep[list(bad)] = False
    items = rec.items.filter(pa.array(keep))
    return replace(rec, job_ids=rec.job_ids[keep], vectors=rec.vectors[keep], items=items), [
        bad[row] for row in sorted(bad)
    ]


def search_delta(
    ids: np.ndarray, vecs: np.ndarray, alive: np.ndarray, q: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-min(k, size) over the delta -> scores, job_ids [q, min(k, size)].

    Args:
        ids: [>= size] int64 job ids by position. vecs: [>= size, d] float32 vectors.
        alive: [size] bool, positions that hold a live record (others never returned).
        q: float32 [q, d] checked queries.
    """
    size = len(alive)
    kk, n_dead = min(k, size), size - int(alive.sum())
    if kk == 0 or n_dead == size:
        return np.full((len(q), kk), -np.inf, np.float32), np.full((len(q), kk), -1, np.int64)
    if n_dead <= FEW_DEAD:
        # faiss's SIMD scan with a top-k heap is ~10x numpy's matmul + argpartition here;
        # asking for k + n_dead keeps k live hits however the dead positions rank.
        scores, pos = faiss.knn(q, vecs[:size], min(size, k + n_dead), faiss.METRIC_INNER_PRODUCT)
        ok = pos >= 0
        ok[ok] = alive[pos[ok]]
        first = np.argsort(~ok, axis=1, kind="stable")[:, :kk]
        keep = np.take_along_axis(ok, first, 1)
        top_s = np.where(keep, np.take_along_axis(scores, first, 1), -np.inf).astype(np.float32)
        return top_s, np.where(keep, ids[np.take_along_axis(pos, first, 1)], -1)
    scores = np.full((len(q), kk), -np.inf, np.float32)
    out = np.full((len(q), kk), -1, np.int64)
    vecs, dead = vecs[:size], ~alive
    step = max(1, SCORE_CELLS // size)
    for a in range(0, len(q), step):  # many dead positions: mask them in a full score matrix
        s = q[a : a + step] @ vecs.T  # [chunk, size] float32 inner products
        s[:, dead] = -np.inf
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        top_s = np.take_along_axis(s, top, 1)
        order = np.argsort(-top_s, axis=1, kind="stable")
        top, top_s = np.take_along_axis(top, order, 1), np.take_along_axis(top_s, order, 1)
        scores[a : a + step] = top_s
        out[a : a + step] = np.where(np.isfinite(top_s), ids[top], -1)
    return scores, out


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of several (scores [q, *], job_ids [q, *]) results; earlier parts win ties."""
    scores = np.concatenate([s for s, _ in parts], axis=1)
    ids = np.concatenate([i for _, i in parts], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
