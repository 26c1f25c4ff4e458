"""Pure functions behind ``ebr.index.live.slot``: checking upsert batches against a slot and
turning them into the delta's rows (searching the delta is query time:
``ebr.index.query.delta``).

They take arrays, not a ``LiveSlot``, so each is testable on its own and holds no lock: the
caller passes one consistent state (``live._View``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow as pa

from ebr.data.records import check_jobs, require_valid
from ebr.index.live.wal import UPSERT, Record
from ebr.index.query.vectors import NORM_TOLERANCE


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
