"""``ebr stream start | status | stop | compact | produce``: the streaming job
(``pipelines.streaming.job``) and its traffic (``pipelines.streaming.produce``).

    ebr stream start --workspace var/demo                # with a loopback Redis of its own
    ebr stream produce --workspace var/demo --live --seconds 30
    ebr stream status --workspace var/demo
    ebr stream stop --workspace var/demo --stop-redis
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.output import emit, operator_errors
from ebr.config import Workspace

stream_app = typer.Typer(no_args_is_help=True, help="The streaming job and its event stream.")
WorkspaceOpt = Annotated[Path, typer.Option(exists=True, file_okay=False, help="workspace root")]
NameOpt = Annotated[str, typer.Option(help="the job's name (its consumer name)")]


def _redis_url(ws: Workspace, redis_url: str | None, name: str) -> str:
    """``--redis-url``, else the started job's; a bad argument when there is neither."""
    from pipelines.streaming.job import job_redis_url

    url = job_redis_url(ws, redis_url, name)
    if not url:
        raise typer.BadParameter("no --redis-url and no started job to take it from")
    return url


@stream_app.command()
@operator_errors
def start(
    workspace: WorkspaceOpt,
    redis_url: Annotated[str | None, typer.Option(help="default: start one on loopback")] = None,
    name: NameOpt = "embedder",
) -> None:
    """Start the streaming job (a process of its own; stop it with ebr stream stop)."""
    from pipelines.streaming.job import start as start_job

    emit(start_job(Workspace(workspace), redis_url, name))


@stream_app.command()
@operator_errors
def status(workspace: WorkspaceOpt, name: NameOpt = "embedder") -> None:
    """The job's handle and whether it runs."""
    from pipelines.streaming.job import status as job_status

    emit(job_status(Workspace(workspace), name))


@stream_app.command()
@operator_errors
def stop(
    workspace: WorkspaceOpt,
    name: NameOpt = "embedder",
    stop_redis: Annotated[bool, typer.Option(help="stop the Redis it started too")] = False,
) -> None:
    """Stop the streaming job (by the PID in its handle, checked first)."""
    from pipelines.streaming.job import stop as stop_job

    emit(stop_job(Workspace(workspace), name, stop_redis))


@stream_app.command()
@operator_errors
def compact(
    workspace: WorkspaceOpt,
    redis_url: Annotated[str | None, typer.Option(help="default: the job's")] = None,
    name: NameOpt = "embedder",
    min_records: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Snapshot the streamed catalogue and fold each serving slot's log, through the gates."""
    from pipelines.streaming.job import compact as compact_job

    ws = Workspace(workspace)
    emit(compact_job(ws, _redis_url(ws, redis_url, name), min_records=min_records))


@stream_app.command()
@operator_errors
def produce(
    workspace: WorkspaceOpt,
    redis_url: Annotated[str | None, typer.Option(help="default: the running job's")] = None,
    file: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="JSON lines, one event each")
    ] = None,
    live: Annotated[bool, typer.Option(help="marketplace-like traffic over WORKSPACE")] = False,
    rate: Annotated[float, typer.Option(min=0.1, help="--live: events per second")] = 20.0,
    seconds: Annotated[float, typer.Option(min=0, help="--live: for how long")] = 30.0,
    seed: Annotated[int, typer.Option(min=0, help="--live: traffic seed")] = 11,
    name: NameOpt = "embedder",
) -> None:
    """Append the events of --file, or --live traffic, to the job's stream."""
    from pipelines.streaming.broker import Broker
    from pipelines.streaming.produce import produce_lines, produce_live

    if (file is None) == (not live):
        raise typer.BadParameter("give exactly one of --file and --live")
    ws = Workspace(workspace)
    url = _redis_url(ws, redis_url, name)
    broker = Broker(url, "producer")
    if file is not None:
        ids = produce_lines(broker, file.read_text().splitlines())
    else:
        ids = produce_live(broker, ws.root, rate, seconds, seed)
    emit({"appended": len(ids), "last_entry_id": ids[-1] if ids else None, "redis_url": url})
