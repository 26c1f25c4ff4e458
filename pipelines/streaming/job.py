"""Start, stop and compact for the streaming job: what the Flyte tasks and the demo call.

    ebr stream start --workspace var/demo [--redis-url URL]
    ebr stream status --workspace var/demo
    ebr stream compact --workspace var/demo
    ebr stream stop --workspace var/demo [--stop-redis]

``start`` launches ``python -m pipelines.streaming.pipeline`` as a process of its own (its own
session, so it outlives the caller, a Flyte task) and records a handle, ``stream/jobs/<name>.json``:
its PID, the Redis it reads and its log. Without ``--redis-url`` it also starts a Redis on
loopback (append-only file in ``stream/redis/``) and records it. ``stop`` sends SIGTERM to the
PID in the handle, after checking that the PID still runs the streaming job: run locally (as
micro-batches, ``pipelines.streaming.local``) it ends after its current micro-batch and closes its
slot writers; SIGKILL follows after a grace period (what it had not acknowledged is read again
on the next start). ``compact`` snapshots the streamed catalogue (``ebr.stream.catalog``),
compacts every serving release's slot (``ebr.release.compaction``) and removes the slots that
earlier compactions replaced once the job has handed them over (``sweep``). On a cluster, the same
pipeline runs on Flink or Dataflow through ``--runner`` and its runner's own job control.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from ebr.config import GateConfig, IndexConfig, Workspace
from ebr.io import atomic_write_json
from ebr.stream.catalog import write_snapshot
from pipelines.streaming.broker import RedisServer
from pipelines.streaming.state import Applied

REPO = Path(__file__).resolve().parents[1]
STOP_GRACE_S = 30.0


def handle_path(ws: Workspace, name: str) -> Path:
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"a job name is letters, digits, - and _, got {name!r}")
    return ws.stream / "jobs" / f"{name}.json"


def _runs(pid: int | None, marker: str) -> bool:
    """Whether ``pid`` is alive and its command line holds ``marker`` (not a reused PID)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return marker in cmdline


def status(ws: Workspace, name: str = "embedder") -> dict[str, Any]:
    """The job's handle with ``running`` (and ``redis_running``); ``{"running": False}`` when
    none was started."""
    path = handle_path(ws, name)
    if not path.is_file():
        return {"name": name, "running": False}
    handle: dict[str, Any] = json.loads(path.read_text())
    handle["running"] = _runs(handle.get("pid"), "pipelines.streaming.pipeline")
    handle["redis_running"] = _runs(handle.get("redis_pid"), "redis-server")
    return handle


def job_redis_url(ws: Workspace, redis_url: str | None, name: str = "embedder") -> str | None:
    """``redis_url``, else the Redis of the job ``name`` when one was started (None: neither)."""
    return redis_url or status(ws, name).get("redis_url")


def start(
    ws: Workspace,
    redis_url: str | None = None,
    name: str = "embedder",
    args: list[str] | None = None,
) -> dict[str, Any]:
    """Launch the streaming job over ``ws`` (and a loopback Redis when ``redis_url`` is None);
    returns its handle. Raises RuntimeError when a job of that name is running."""
    path = handle_path(ws, name)
    current = status(ws, name)
    if current["running"]:
        raise RuntimeError(f"streaming job {name!r} runs already (pid {current['pid']})")
    redis_pid = None
    if redis_url is None:
        if current.get("redis_running"):  # a stopped job's Redis still runs: read it again
            redis_url, redis_pid = current["redis_url"], current["redis_pid"]
        else:
            server = RedisServer(ws.stream / "redis", detach=True)
            assert server.proc is not None, "started"
            redis_url, redis_pid = server.url, server.proc.pid
    log = ws.stream / "jobs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pipelines.streaming.pipeline",
           "--workspace", str(ws.root.resolve()),
           "--redis-url", redis_url, "--consumer", name, *(args or [])]  # fmt: skip
    path_env = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path_env}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=out, start_new_session=True
        )
    handle = {
        "name": name, "pid": proc.pid, "redis_url": redis_url, "redis_pid": redis_pid,
        "started_at": datetime.now(UTC).isoformat(), "command": cmd, "log": str(log),
    }  # fmt: skip
    atomic_write_json(path, handle)
    return {**handle, "running": True}


def stop(ws: Workspace, name: str = "embedder", stop_redis: bool = False) -> dict[str, Any]:
    """SIGTERM the job (SIGKILL after ``STOP_GRACE_S``), and its Redis with ``stop_redis``
    when ``start`` started it; returns what was stopped."""
    current = status(ws, name)
    stopped = {"name": name, "job_stopped": False, "redis_stopped": False}
    if current["running"]:
        _terminate(int(current["pid"]))
        stopped["job_stopped"] = True
    if stop_redis and current.get("redis_running"):
        redis.Redis.from_url(current["redis_url"]).shutdown(nosave=False)
        stopped["redis_stopped"] = True
    path = handle_path(ws, name)
    if path.is_file() and (stop_redis or not current.get("redis_running")):
        path.unlink()
    return stopped


def _terminate(pid: int) -> None:
    os.killpg(pid, signal.SIGTERM)  # its own session: the runner's worker threads with it
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and _runs(pid, "pipelines.streaming.pipeline"):
        time.sleep(0.1)
    if _runs(pid, "pipelines.streaming.pipeline"):
        os.killpg(pid, signal.SIGKILL)


def compact(
    ws: Workspace,
    redis_url: str,
    cfg: IndexConfig | None = None,
    gates: GateConfig | None = None,
    min_records: int = 1,
) -> dict[str, Any]:
    """Snapshot the streamed catalogue, compact every serving release's slot, then remove the
    slots earlier compactions replaced and the job has handed over (``sweep``)."""
    from ebr.release.compaction import compact_serving

    snapshot(ws, redis_url)
    releases = compact_serving(ws, cfg, gates, min_records)
    return {"releases": releases, "swept_slots": sweep(ws, redis_url)}


def sweep(ws: Workspace, redis_url: str) -> list[str]:
    """Remove the slot and log of each release a compaction replaced once the streaming job
    has handed its successor over (it copied the old log's tail and writes only the new one;
    no request is routed to a retired release) and nothing else names it."""
    from ebr.release.provision import remove_unused_slot
    from ebr.release.record import read_release
    from ebr.release.state import read_state

    applied, removed = Applied(redis.Redis.from_url(redis_url)), []
    for release_id, entry in read_state(ws)["releases"].items():
        successor = entry.get("replaced_by")
        if entry["state"] != "retired" or not successor:
            continue
        slot = read_release(ws, release_id).slot.name
        new_slot = read_release(ws, successor).slot.name
        if (ws.slots / slot).exists() and applied.handed_off(new_slot) is not None:
            if remove_unused_slot(ws, release_id)[0]:
                removed.append(slot)
    return removed


def snapshot(ws: Workspace, redis_url: str | None = None, name: str = "embedder") -> bool:
    """Write the streamed catalogue (``ebr.stream.catalog``) from ``redis_url`` (None: the
    Redis of the job ``name`` when one was started); False when there is none to read."""
    url = job_redis_url(ws, redis_url, name)
    if not url:
        return False
    applied = Applied(redis.Redis.from_url(url))
    write_snapshot(ws, "jobs", applied.catalog("job"))
    write_snapshot(ws, "members", applied.catalog("member"))
    return True
