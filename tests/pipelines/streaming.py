"""Helpers of the streaming tests: a workspace copy per test, change events made from its
tables, the streaming job as a real subprocess, and "drained" (every entry read and
acknowledged)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import redis

from ebr.data.tables import PROFILE_FIELDS
from ebr.index.live.slot import LiveSlot, open_live
from ebr.release.record import read_release
from ebr.release.state import read_state
from pipelines.streaming.broker import progress

REPO = Path(__file__).resolve().parents[2]
DRAIN_TIMEOUT_S = 180.0


def copy_workspace(src: Path, dst: Path) -> Path:
    """A private copy, Feast online store included (the streaming job writes slot logs and
    Feast rows)."""
    from feature_repo.store import copy_workspace as copy

    return copy(src, dst).root


def plain(value: Any) -> Any:
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    return value


def job_record(jobs: pd.DataFrame, job_id: int, /, **changes: Any) -> dict[str, Any]:
    row = jobs.loc[jobs["job_id"] == job_id].iloc[0].to_dict()
    return {k: plain(v) for k, v in row.items()} | changes


def profile_record(members: pd.DataFrame, member_id: int, /, **changes: Any) -> dict[str, Any]:
    row = members.loc[members["member_id"] == member_id].iloc[0].to_dict()
    return {"member_id": member_id} | {f: plain(row[f]) for f in PROFILE_FIELDS} | changes


class StreamJob:
    """``python -m pipelines.streaming.pipeline`` over ``ws`` as a subprocess (its output in a
    log file)."""

    def __init__(self, ws: Path, url: str, log: Path, *extra: str) -> None:
        cmd = [sys.executable, "-m", "pipelines.streaming.pipeline", "--workspace", str(ws),
               "--redis-url", url, "--poll-interval-s", "0.1", *extra]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=out)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, by this job's PID (a crash: nothing is flushed or closed)."""
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def acked(client: redis.Redis) -> tuple[int, int]:
    """(entries in the stream, entries the job's group has delivered and acknowledged)."""
    return progress(client)


def wait_drained(
    client: redis.Redis, job: StreamJob | Launched, timeout: float = DRAIN_TIMEOUT_S
) -> None:
    """Until every entry was read and acknowledged (fails with the job's output)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        length, done = acked(client)
        if length and done >= length:
            return
        assert job.alive(), f"the streaming job exited:\n{job.output()}"
        time.sleep(0.2)
    raise AssertionError(f"not drained: {acked(client)} after {timeout} s\n{job.output()}")


def stream_until_drained(ws: Path, client: redis.Redis, url: str, log: Path, *extra: str) -> None:
    """Run the streaming job over ``ws`` until every entry is acknowledged, then stop it."""
    job = StreamJob(ws, url, log, *extra)
    try:
        wait_drained(client, job)
    finally:
        job.stop()


class Launched:
    """A job ``pipelines.streaming.job.start`` launched (through Flyte or directly)."""

    def __init__(self, ws: Path, name: str = "embedder") -> None:
        self.ws, self.name = ws, name

    def alive(self) -> bool:
        from ebr.config import Workspace
        from pipelines.streaming.job import status

        return bool(status(Workspace(self.ws), self.name)["running"])

    def output(self) -> str:
        log = self.ws / "stream" / "jobs" / f"{self.name}.log"
        return log.read_text(errors="replace")[-4000:] if log.is_file() else ""


def release_slot(ws: Path, release_id: str | None = None) -> LiveSlot:
    """The live release's (or ``release_id``'s) slot with its log replayed, read-only."""
    from ebr.config import Workspace

    w = Workspace(ws)
    rid = release_id or read_state(w)["live"]
    return open_live(w.slots / read_release(w, rid).slot.name, writable=False)


def live_jobs(live: LiveSlot) -> dict[int, tuple[np.ndarray, dict[str, Any]]]:
    """job_id -> (vector, record) of every job the slot serves (snapshot minus tombstones, plus
    the latest upsert of each job)."""
    snap, keep = live.snapshot, np.flatnonzero(~live.deleted_rows())
    out = {}
    items = snap.items.iloc[keep].to_dict("records")
    for row, rec in zip(keep.tolist(), items, strict=True):
        out[int(snap.job_ids[row])] = (np.asarray(snap.vectors[row]), rec)
    ids, vecs, delta = live.delta()
    for i, v, rec in zip(ids.tolist(), vecs, delta.to_dict("records"), strict=True):
        out[int(i)] = (v, rec)
    return out


def live_version(ws: Path) -> str:
    """The model version of the live release."""
    from ebr.config import Workspace

    state = read_state(Workspace(ws))
    return str(state["releases"][state["live"]]["version"])


def now() -> datetime:
    return datetime.now(UTC)
