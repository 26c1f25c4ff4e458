"""Compose the serving graph, and run it locally.

Production (a Serve config, see ``serving/config.yaml``)::

    serve run serving/config.yaml          # or: serve deploy serving/config.yaml

Local demo (one process, Ctrl-C / SIGTERM to stop)::

    python -m serving.app --workspace var/demo --port 8000
    curl -s localhost:8000/v1/search -H 'content-type: application/json' \
        -d '{"query": "data engineer", "k": 5}'
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

import typer
from ray import serve
from ray.serve import Application

from ebr.config import Workspace
from ebr.net import free_port
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
FRONTS = ("haproxy", "proxy")


def build_app(args: dict[str, Any] | AppArgs) -> Application:
    """The bound graph for ``args`` (Serve's app builder): the Ingress, serving the releases
    itself or through a ReleaseServer deployment (``AppArgs.release_server``).

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

    server = None
    if cfg.release_server == "deployment":
        server = ReleaseServer.options(
            num_replicas=cfg.server_replicas,
            max_ongoing_requests=cfg.backend_max_ongoing_requests,
            ray_actor_options={"num_cpus": cfg.server_num_cpus},
            logging_config={"enable_access_log": cfg.access_log},
        ).bind(str(ws.root), cfg.verify_slot, cfg.log_refresh_s)
    return Ingress.options(
        num_replicas=cfg.ingress_replicas,
        max_ongoing_requests=cfg.ingress_max_ongoing_requests,
        max_queued_requests=cfg.ingress_max_queued_requests,
        ray_actor_options={"num_cpus": cfg.ingress_num_cpus},
        logging_config={"enable_access_log": cfg.access_log},
    ).bind(
        server, str(ws.root), cfg.retrieval, cfg.state_poll_s,
        cfg.admin_token_env, cfg.admin_token_file, cfg.max_inflight, cfg.verify_slot,
        cfg.log_refresh_s,
    )  # fmt: skip


def haproxy_env(run_dir: Path) -> dict[str, str]:
    """Ray's settings for Serve's HAProxy front, private to one server: its files under
    ``run_dir`` and free ports for its stats page and Prometheus exporter (Ray's defaults are
    fixed paths in /tmp and fixed ports, which two servers on one machine would share)."""
    files = {
        "CONFIG_FILE_LOC": "haproxy.cfg",
        "SOCKET_PATH": "admin.sock",
        "SERVER_STATE_FILE": "server-state",
        "METRICS_SOCKET_PATH": "metrics.sock",
    }
    env = {f"RAY_SERVE_HAPROXY_{key}": str(run_dir / name) for key, name in files.items()}
    env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] = str(run_dir)
    for key in ("STATS_PORT", "METRICS_PORT"):
        env[f"RAY_SERVE_HAPROXY_{key}"] = str(free_port())
    # One thread: the 2-core machines have no core to spare for more.
    env["RAY_SERVE_HAPROXY_NBTHREAD"] = "1"
    env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    return env


def main(
    workspace: str = typer.Option(..., help="workspace root holding models/, slots/, ..."),
    host: str = typer.Option("127.0.0.1", help="HTTP bind address (loopback by default)"),
    port: int = typer.Option(8000, help="HTTP port"),
    num_cpus: int = typer.Option(2, help="CPUs Ray may schedule on (the machines have 2)"),
    front: str = typer.Option(
        "haproxy",
        help="what listens on the port: 'haproxy' (Serve's HAProxy, balancing the ingress "
        "replicas' own HTTP servers) or 'proxy' (Serve's Python proxy actor)",
    ),
    throughput_optimized: bool = typer.Option(
        True, help="Ray Serve's throughput-optimized mode (RAY_SERVE_THROUGHPUT_OPTIMIZED)"
    ),
    app_args: str = typer.Option(
        "{}", help="more AppArgs fields as JSON, e.g. '{\"ingress_replicas\": 2}'"
    ),
) -> None:
    """Start a local Ray, serve the app over HTTP and block until SIGTERM / SIGINT."""
    if front not in FRONTS:
        raise typer.BadParameter(f"--front must be one of {', '.join(FRONTS)}, not {front!r}")
    try:
        args = AppArgs.model_validate({**json.loads(app_args), "workspace": workspace})
    except (ValueError, TypeError) as err:  # bad JSON, or a field AppArgs refuses (named)
        raise typer.BadParameter(f"--app-args: {err}") from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline machines: no phone-home
    # Ray Serve's own switches, read when Ray starts (a cluster deployment with `serve
    # deploy` sets them in the cluster's environment). Throughput-optimized: every ingress
    # replica answers HTTP itself ("direct ingress"), deployments call each other over gRPC,
    # per-request stderr logs off. The HAProxy front then sends each request straight to an
    # ingress replica's port; the Python proxy actor would add a hop of ~3.4 ms here
    # (benchmarks.serve_load: /v1/search p50 14 -> 3.5 ms with the work in the ingress).
    run_dir = Path(tempfile.mkdtemp(prefix="ebr-serve-"))
    if throughput_optimized:
        os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
        # A draining ingress replica keeps answering this long for load balancers to notice;
        # Serve's HAProxy on this node is told at once (Ray's default, 30 s, is for cloud LBs).
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
        if front == "haproxy":
            for key, value in haproxy_env(run_dir).items():
                os.environ.setdefault(key, value)
    elif front == "haproxy":
        raise typer.BadParameter("--front haproxy needs --throughput-optimized (direct ingress)")
    import ray

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
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    typer.run(main)
