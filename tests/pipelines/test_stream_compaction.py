"""The streaming job driven through Flyte (``pyflyte run workflows/streaming.py``): started,
its slot compacted while it streams (a new gated release replaces the live one), stopped. The
compacted release holds every change: those folded into its snapshot and those that arrived
after, which the job writes to the new slot's log. The next compaction removes the old slot
once the job has handed the new one over."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ebr.config import Workspace
from ebr.index.live.slot import open_live
from ebr.release.record import read_release
from ebr.release.state import read_state, rollback_target
from ebr.stream.events import encode
from pipelines.streaming.broker import Broker, RedisServer
from tests.pipelines.streaming import (
    REPO,
    Launched,
    copy_workspace,
    job_record,
    live_jobs,
    now,
    release_slot,
    wait_drained,
)


def pyflyte(*args: str) -> str:
    cmd = [str(Path(sys.executable).with_name("pyflyte")), "run", "workflows/streaming.py", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_flyte_starts_compacts_and_stops_the_streaming_job(
    platform_ws: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    ws = copy_workspace(platform_ws, tmp_path / "ws")
    w = Workspace(ws)
    jobs = Path(ws / "data" / "jobs.parquet")
    import pandas as pd

    table = pd.read_parquet(jobs)
    ids = table["job_id"].astype(int).tolist()
    broker = Broker(redis_server.url, "producer")
    t, titles = now(), {}
    for i, jid in enumerate(ids[:20]):
        titles[jid] = f"Before {i}"
        broker.produce(encode("job_updated", jid, t, job_record(table, jid, title=titles[jid])))
    for i in range(5):
        titles[5_000_000 + i] = f"Posted {i}"
        rec = job_record(table, ids[0], job_id=5_000_000 + i, title=titles[5_000_000 + i])
        broker.produce(encode("job_posted", 5_000_000 + i, t, rec))
    closed = set(ids[50:53])
    for jid in closed:
        broker.produce(encode("job_closed", jid, t))

    pyflyte("start_streaming", "--workspace", str(ws), "--redis_url", redis_server.url)
    job = Launched(ws)
    try:
        wait_drained(broker.client, job)
        old = read_state(w)["live"]
        pyflyte("compact_slots", "--workspace", str(ws), "--redis_url", redis_server.url)
        state = read_state(w)
        new = state["live"]
        assert new != old and state["releases"][old]["state"] == "retired"
        with pytest.raises(ValueError, match="nothing to roll back"):
            rollback_target(state)  # the compacted-away release is retired: no rollback to it
        # After the compaction: more changes, to folded jobs and to new ones.
        t2, after = now(), set()
        for i, jid in enumerate([*ids[:5], 5_000_000]):
            titles[jid] = f"After {i}"
            after.add(jid)
            rec = job_record(table, ids[0], job_id=jid, title=titles[jid])
            broker.produce(encode("job_updated", jid, t2, rec))
        titles[5_000_100] = "Posted later"
        rec = job_record(table, ids[0], job_id=5_000_100, title="Posted later")
        broker.produce(encode("job_posted", 5_000_100, t2, rec))
        after.add(5_000_100)
        closed.add(5_000_001)
        broker.produce(encode("job_closed", 5_000_001, t2))
        after.add(5_000_001)
        wait_drained(broker.client, job)
        # The job has written to the new slot (handed over): the next compaction sweeps the
        # old slot away; the new one, just replaced again, stays until it is handed over too.
        old_slot = read_release(w, old).slot.name
        assert (w.slots / old_slot).is_dir()
        pyflyte("compact_slots", "--workspace", str(ws), "--redis_url", redis_server.url)
        assert not (w.slots / old_slot).exists()
        assert (w.slots / read_release(w, new).slot.name).is_dir()
    finally:
        out = pyflyte("stop_streaming", "--workspace", str(ws))
    assert not job.alive(), out

    new_slot = read_release(w, new).slot.name
    served = live_jobs(release_slot(ws, new))
    for jid, title in titles.items():
        if jid not in closed:
            assert served[jid][1]["title"] == title, jid
    assert not closed & served.keys()
    live = open_live(w.slots / new_slot, writable=False)
    snapshot = set(live.snapshot.job_ids.tolist())
    assert {5_000_000, 5_000_002} <= snapshot  # folded into the new snapshot
    delta, _, _ = live.delta()
    assert set(delta.tolist()) <= after  # its log holds only what came after the compaction


def test_a_compaction_the_gates_refuse_leaves_the_release_serving(
    platform_ws: Path, tmp_path: Path
) -> None:
    """A log that tombstoned an active job the catalogue still lists: the compacted slot would
    not cover the catalogue, so the coverage gate refuses it; nothing changes."""
    from ebr.index.live.slot import open_live
    from ebr.release.compaction import compact_release

    ws = copy_workspace(platform_ws, tmp_path / "ws")
    w = Workspace(ws)
    live_id = read_state(w)["live"]
    slot = read_release(w, live_id).slot.name
    with open_live(w.slots / slot) as live:  # one logged tombstone: something to compact
        items = live.snapshot.items
        job_id = int(items.loc[items["active"].astype(bool), "job_id"].iloc[0])
        live.delete([job_id])
    before = sorted(p.name for p in w.slots.iterdir())
    out = compact_release(w, live_id)
    assert out["compacted"] is False and "coverage gate" in out["reason"], out
    assert read_state(w)["live"] == live_id  # still serving
    assert sorted(p.name for p in w.slots.iterdir()) == before  # the refused slot is gone
    assert job_id not in live_jobs(release_slot(ws, live_id))  # the log still applies
