"""Pure array functions behind ``ebr.index.live``: checking upsert batches against a slot,
searching a snapshot minus its tombstones, exact search of the delta, and merging the two.

They take arrays, not a ``LiveSlot``, so each is testable on its own and holds no lock: the
caller passes one consistent state (``live._View``).
"""

from __future__ import annotations

import math

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa

from ebr.index.slot import Slot

OVERFETCH = 1.5  # extra snapshot candidates beyond k / live fraction, so one search usually does
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
    ids = records["job_id"]
    if not pd.api.types.is_integer_dtype(ids.dtype) or (ids < 0).any():
        raise ValueError(f"job_id must be integers >= 0, got dtype {ids.dtype}")
    if ids.duplicated().any():
        raise ValueError(f"job_id repeats within the batch, e.g. {ids[ids.duplicated()].iloc[0]}")
    frame = records[columns].reset_index(drop=True)
    for col, dtype in items.dtypes.items():
        if pd.api.types.is_bool_dtype(dtype) and not pd.api.types.is_bool_dtype(frame[col]):
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


def search_snapshot(
    slot: Slot, deleted: np.ndarray, n_deleted: int, q: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """ANN top-k over the rows of ``slot`` not marked in ``deleted`` [n] bool.

    Args:
        q: float32 [q, d] checked queries. n_deleted: ``deleted.sum()``, kept by the caller.

    Returns:
        scores [q, k] float32 descending and job_ids [q, k] int64; -inf / -1 pad.
    """
    index, n = slot.index, slot.index.ntotal
    scores = np.full((len(q), k), -np.inf, np.float32)
    ids = np.full((len(q), k), -1, np.int64)
    if n_deleted == 0:
        return slot.search(q, k)  # nothing to filter: skip the bookkeeping below
    if n - n_deleted <= 0:
        return scores, ids
    # Tombstoned rows still sit in the index: ask for enough extra that ~k survive, then ask
    # again (4x) for the queries whose neighbourhood was deleted more than on average.
    live_frac = (n - n_deleted) / n
    ask = min(n, math.ceil(k / live_frac * OVERFETCH) + 8)
    todo = np.arange(len(q))
    while len(todo):
        raw_s, raw_r = index.search(q[todo], ask)
        ok = raw_r >= 0
        ok[ok] = ~deleted[raw_r[ok]]
        # A list with -1 padding means the probed cells are exhausted: more will not help.
        short = (ok.sum(axis=1) < k) & (raw_r[:, -1] >= 0) & (ask < n)
        first = np.argsort(~ok, axis=1, kind="stable")[:, :k]  # survivors, in score order
        keep = np.take_along_axis(ok, first, 1)[~short]
        rows = np.take_along_axis(raw_r, first, 1)[~short]
        top_s = np.take_along_axis(raw_s, first, 1)[~short]
        done, width = todo[~short], first.shape[1]
        scores[done, :width] = np.where(keep, top_s, -np.inf)
        ids[done, :width] = np.where(keep, slot.job_ids[np.where(keep, rows, 0)], -1)
        todo, ask = todo[short], min(n, ask * 4)
    return scores, ids


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
