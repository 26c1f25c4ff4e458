"""Flyte workflows for the streaming Feature Cloud: start and stop the streaming job, compact
the slot logs it writes (``workflows.launch_plans`` runs compaction on a schedule).

    pyflyte run workflows/streaming.py start_streaming --workspace var/demo
    pyflyte run workflows/streaming.py compact_slots --workspace var/demo
    pyflyte run workflows/streaming.py stop_streaming --workspace var/demo --stop_redis

The job (``pipelines.streaming.pipeline``) embeds every change event with the towers of every
release not retired and writes slot logs and Feast views; it runs until ``stop_streaming``.
"""

from __future__ import annotations

from flytekit import workflow

from ebr.config import GateConfig, IndexConfig
from tasks import streaming as stt

INDEX_DEFAULTS, GATE_DEFAULTS = IndexConfig(), GateConfig()


@workflow
def start_streaming(workspace: str, redis_url: str = "", name: str = "embedder") -> str:
    """Start the streaming job; returns its handle (PID, Redis, log)."""
    return stt.start_stream_job(workspace=workspace, redis_url=redis_url, name=name)  # type: ignore[no-any-return]


@workflow
def stop_streaming(workspace: str, name: str = "embedder", stop_redis: bool = False) -> str:
    """Stop the streaming job; returns what was stopped."""
    return stt.stop_stream_job(workspace=workspace, name=name, stop_redis=stop_redis)  # type: ignore[no-any-return]


@workflow
def compact_slots(
    workspace: str,
    redis_url: str = "",
    name: str = "embedder",
    index: IndexConfig = INDEX_DEFAULTS,
    gates: GateConfig = GATE_DEFAULTS,
    min_records: int = 1,
) -> str:
    """Compact each serving release's slot log into a new gated release that replaces it."""
    return stt.compact_stream_slots(  # type: ignore[no-any-return]
        workspace=workspace, redis_url=redis_url, name=name, index=index, gates=gates,
        min_records=min_records,
    )  # fmt: skip
