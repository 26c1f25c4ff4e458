"""Flyte tasks over the streaming job (``pipelines.streaming.job``): start it, stop it, compact
the slots it writes. Each returns its result as JSON."""

from __future__ import annotations

import json

import redis
from flytekit import Resources, task

from ebr.config import GateConfig, IndexConfig, Workspace


@task(requests=Resources(cpu="1", mem="1Gi"))
def start_stream_job(workspace: Workspace, redis_url: str, name: str) -> str:
    """Launch the streaming job (``redis_url`` "": on a loopback Redis it starts); returns its
    handle. The job outlives the task: ``stop_stream_job`` ends it."""
    from pipelines.streaming.job import start

    return json.dumps(start(workspace, redis_url or None, name))


@task(requests=Resources(cpu="1", mem="1Gi"))
def stop_stream_job(workspace: Workspace, name: str, stop_redis: bool) -> str:
    """Stop the streaming job (SIGTERM by its recorded PID) and, with ``stop_redis``, the Redis
    its start launched; returns what was stopped."""
    from pipelines.streaming.job import stop

    return json.dumps(stop(workspace, name, stop_redis))


@task(requests=Resources(cpu="2", mem="4Gi"))
def compact_stream_slots(
    workspace: Workspace, redis_url: str, name: str, index: IndexConfig, gates: GateConfig,
    min_records: int,
) -> str:  # fmt: skip
    """Snapshot the streamed catalogue and fold each serving slot's log into a new slot,
    released through the gates in place of the old one (``redis_url`` "": the job's)."""
    from pipelines.streaming.job import compact, job_redis_url

    url = job_redis_url(workspace, redis_url or None, name)
    if not url:
        raise ValueError(f"no redis_url given and no streaming job {name!r} was started")
    return json.dumps(compact(workspace, url, index, gates, min_records), default=str)


@task(requests=Resources(cpu="1", mem="2Gi"))
def fold_streamed_changes(workspace: Workspace) -> str:
    """The catalogue tables with the streamed changes folded in, before a batch re-embed reads
    them: a fresh snapshot from the streaming job's Redis when one was started, else the last
    compaction's (``ebr.stream.catalog.fold_snapshot``); returns the counts."""
    from ebr.stream.catalog import fold_snapshot
    from pipelines.streaming.job import snapshot

    try:
        snapshot(workspace)
    except redis.RedisError as err:  # the job's Redis is gone: the last snapshot it is
        print(f"no fresh snapshot ({err}); folding the last compaction's")
    return json.dumps(fold_snapshot(workspace))
