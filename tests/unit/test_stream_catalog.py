"""The catalogue with streamed changes: the snapshot round-trips, the overlay applies
postings, edits and closures (a closed job stays, inactive), and folding it into the tables is
idempotent."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from ebr.config import DataConfig, Workspace
from ebr.data.marketplace import write_marketplace
from ebr.stream.catalog import current_jobs, fold_snapshot, read_snapshot, write_snapshot
from ebr.stream.events import encode

T = datetime(2026, 11, 30, 12, tzinfo=UTC)


def _event(kind: str, entity: int, record: dict | None = None) -> dict:
    return json.loads(encode(kind, entity, T, record)["event"])


def test_snapshot_overlay_and_fold(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    write_marketplace(DataConfig(n_jobs=200, seed=2), ws.data)
    jobs = pd.read_parquet(ws.data / "jobs.parquet")
    first, second = jobs.iloc[0].to_dict(), int(jobs["job_id"].iloc[1])
    one = int(first["job_id"])
    new_id = int(jobs["job_id"].max()) + 1
    latest = {
        one: _event("job_updated", one, first | {"title": "Diver"}),
        second: _event("job_closed", second),
        new_id: _event("job_posted", new_id, first | {"job_id": new_id, "title": "Welder"}),
        10**9: _event("job_closed", 10**9),  # closing a job the tables never had: nothing
    }  # fmt: skip
    write_snapshot(ws, "jobs", latest)
    assert read_snapshot(ws, "jobs").keys() == latest.keys()
    now = current_jobs(ws).set_index("job_id")
    assert now.loc[one, "title"] == "Diver"
    assert not now.loc[second, "active"] and now.loc[new_id, "title"] == "Welder"
    assert 10**9 not in now.index and len(now) == len(jobs) + 1
    assert str(now["posted_at"].dtype).startswith("datetime64")

    assert fold_snapshot(ws) == {"jobs": 4, "members": 0}
    folded = pd.read_parquet(ws.data / "jobs.parquet")
    fold_snapshot(ws)  # again: nothing changes
    pd.testing.assert_frame_equal(pd.read_parquet(ws.data / "jobs.parquet"), folded)
    assert folded.set_index("job_id").loc[new_id, "title"] == "Welder"
