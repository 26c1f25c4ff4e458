"""Compose the serving graph, and run it locally.

Production (a Serve config, see ``serving/config.yaml``)::

    serve run serving/config.yaml          # or: serve deploy serving/config.yaml

Local demo (one process, Ctrl-C / SIGTERM to stop)::

    python -m serving.app --workspace var/demo --port 8000
    curl -s localhost:8000/v1/search -H 'content-type: application/json' \
        -d '{"query": "data engineer", "k": 5}'
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import typer
from ray import serve
from ray.serve import Application

from ebr.config import Workspace
from serving.deployments import Ingress
from serving.encoder import request_tower_dir
from serving.release_server import ReleaseServer
from serving.router import ReleaseRouter
from serving.schemas import AppArgs

APP_NAME = "ebr"
# End-to-end limit the proxy puts on one HTTP request (a search takes milliseconds; a stuck
# client or replica must not hold a connection for minutes). The ingress also bounds how long
# it waits for a request body (serving.guards.BODY_TIMEOUT_S).
REQUEST_TIMEOUT_S = 30.0


def build_app(args: dict[str, Any] | AppArgs) -> Application:
    """The bound graph Ingress(ReleaseServer) for ``args`` (Serve's app builder).

    Which releases serve is data (``releases/state.json``), not part of the app: the ingress
    follows it, and the release server loads each release on its first request (model
    multiplexing), so promotions, rollbacks and experiments need no redeploy.

    Raises:
        pydantic.ValidationError: bad args. ``serving.router.NoLiveRelease``: nothing to
        serve. FileNotFoundError: the live release's model has no request tower.
    """
    cfg = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    # Replicas may run with another working directory than the process that builds the app.
    ws = Workspace(Path(cfg.workspace).expanduser().resolve())
    router = ReleaseRouter(ws)  # fail the deploy now, not in a replica restart loop
    request_tower_dir(ws, router.info(router.state()["live"]).model_version)

    server = ReleaseServer.options(
        num_replicas=cfg.server_replicas,
        max_ongoing_requests=cfg.backend_max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.server_num_cpus},
        logging_config={"enable_access_log": cfg.access_log},
    ).bind(str(ws.root), cfg.verify_slot, cfg.log_refresh_s)
    return Ingress.options(
        max_ongoing_requests=cfg.ingress_max_ongoing_requests,
        max_queued_requests=cfg.ingress_max_queued_requests,
        ray_actor_options={"num_cpus": cfg.ingress_num_cpus},
        logging_config={"enable_access_log": cfg.access_log},
    ).bind(
        server, str(ws.root), cfg.retrieval, cfg.state_poll_s,
        cfg.admin_token_env, cfg.admin_token_file, cfg.max_inflight,
    )  # fmt: skip


def main(
    workspace: str = typer.Option(..., help="workspace root holding models/, slots/, ..."),
    host: str = typer.Option("127.0.0.1", help="HTTP bind address (loopback by default)"),
    port: int = typer.Option(8000, help="HTTP port"),
    num_cpus: int = typer.Option(2, help="CPUs Ray may schedule on (the machines have 2)"),
    throughput_optimized: bool = typer.Option(
        True, help="Ray Serve's throughput-optimized mode (RAY_SERVE_THROUGHPUT_OPTIMIZED)"
    ),
) -> None:
    """Start a local Ray, serve the app over HTTP and block until SIGTERM / SIGINT."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline machines: no phone-home
    # Ray Serve's own switch (read when Ray starts): the ingress replica answers HTTP itself
    # (no proxy actor hop), deployments call each other over gRPC, per-request stderr logs
    # off. Measured on the 2-core machines (benchmarks.serve_load): /v1/search p50 17.5 ->
    # ~11 ms. A cluster deployment (serve deploy) sets it in the cluster's environment.
    if throughput_optimized:
        os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    import ray

    args = AppArgs(workspace=workspace)
    ray.init(num_cpus=num_cpus, include_dashboard=False)
    try:
        serve.start(
            http_options={"host": host, "port": port, "request_timeout_s": REQUEST_TIMEOUT_S}
        )
        serve.run(build_app(args), name=APP_NAME, route_prefix=args.route_prefix, blocking=False)
        typer.echo(f"serving the releases of {workspace} on http://{host}:{port}", err=True)
        stop = threading.Event()
        # A background `serve run` ignores SIGINT in non-interactive shells; honour both.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1.0):  # a timed wait keeps the main thread responsive to signals
            pass
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    typer.run(main)
