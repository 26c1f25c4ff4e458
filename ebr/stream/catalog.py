"""The catalogue as of now: the batch tables with the streamed changes applied.

The streaming job keeps the latest event per job and member (in Redis, beside the stream); a
compaction writes them to ``stream/catalog/{jobs,members}.parquet`` (one row per changed
entity: the event's kind, time and record). ``current_jobs`` is ``data/jobs.parquet``
overlaid with them: what a slot compacted from the stream must cover (the coverage gate) and
what a batch re-embed of the final catalogue reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ebr.config import Workspace
from ebr.io import atomic_write_parquet

KEYS = {"jobs": "job_id", "members": "member_id"}


def snapshot_path(ws: Workspace, table: str) -> Path:
    if table not in KEYS:
        raise ValueError(f"table must be one of {sorted(KEYS)}, got {table!r}")
    return ws.stream / "catalog" / f"{table}.parquet"


def write_snapshot(ws: Workspace, table: str, latest: Mapping[int, Mapping[str, Any]]) -> Path:
    """Keep ``latest`` (entity id -> its latest streamed event) as the table's snapshot,
    replaced atomically."""
    rows = [{"id": int(i), "kind": str(e["kind"]), "event_time": str(e["event_time"]),
             "record": json.dumps(e.get("record"))} for i, e in sorted(latest.items())]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["id", "kind", "event_time", "record"])
    path = snapshot_path(ws, table)
    atomic_write_parquet(path, frame)
    return path


def read_snapshot(ws: Workspace, table: str) -> dict[int, dict[str, Any]]:
    """entity id -> {kind, event_time, record} ({} before any compaction)."""
    path = snapshot_path(ws, table)
    if not path.is_file():
        return {}
    frame = pd.read_parquet(path)
    return {int(r.id): {"kind": r.kind, "event_time": r.event_time, "record": json.loads(r.record)}
            for r in frame.itertuples()}  # fmt: skip


def overlay(table: pd.DataFrame, key: str, latest: Mapping[int, Mapping[str, Any]]) -> pd.DataFrame:
    """``table`` (jobs or members) with the streamed changes applied: a posted or updated job and
    an updated profile replace (or add) the row; a closed job's row is kept with ``active``
    False (the catalogue keeps closed jobs; slots serve open ones)."""
    rows = {int(i): r for i, r in zip(table[key], table.to_dict("records"), strict=True)}
    for entity, event in latest.items():
        if event["kind"] == "job_closed":
            if entity in rows:
                rows[entity] = {**rows[entity], "active": False}
        else:
            rows[entity] = {**rows.get(entity, {}), **event["record"]}
    out = pd.DataFrame(list(rows.values()), columns=table.columns)
    if "posted_at" in out:
        out["posted_at"] = pd.to_datetime(out["posted_at"], utc=True, format="ISO8601")
    return out.sort_values(key, kind="stable").reset_index(drop=True)


def current_jobs(ws: Workspace, columns: list[str] | None = None) -> pd.DataFrame:
    """``data/jobs.parquet`` with the last compaction's streamed changes applied."""
    jobs = pd.read_parquet(ws.data / "jobs.parquet")
    latest = read_snapshot(ws, "jobs")
    out = overlay(jobs, "job_id", latest) if latest else jobs
    return out if columns is None else out[columns]


def fold_snapshot(ws: Workspace) -> dict[str, int]:
    """Write the last compaction's streamed changes into ``data/{jobs,members}.parquet``
    (atomically; idempotent: folding the same snapshot again changes nothing), so a batch
    re-embed reads the catalogue as streamed. Returns the changed entities per table."""
    out = {}
    for table in ("jobs", "members"):
        latest = read_snapshot(ws, table)
        out[table] = len(latest)
        if latest:
            path = ws.data / f"{table}.parquet"
            atomic_write_parquet(path, overlay(pd.read_parquet(path), KEYS[table], latest))
    return out
