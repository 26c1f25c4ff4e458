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
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ebr.config import Workspace
from serving.front import claim_ports, haproxy_env, is_loopback, server_env
from serving.guards import HEADER_TIMEOUT_S, REQUEST_TIMEOUT_S
from serving.router import ReleaseRouter
from serving.schemas import AppArgs

if TYPE_CHECKING:
    from ray.serve import Application

# Ray is imported where it is used: `python -m serving.app` sets Ray's environment (ports,
# loopback) before Ray reads it at import.
APP_NAME = "ebr"
FRONTS = ("haproxy", "proxy")
__all__ = ["APP_NAME", "REQUEST_TIMEOUT_S", "build_app", "main"]


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
    from serving.deployments import Ingress
    from serving.encoder import request_tower_dir
    from serving.release_server import ReleaseServer

    cfg = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    # Replicas may run with another working directory than the process that builds the app.
    ws = Workspace(Path(cfg.workspace).expanduser().resolve())
    router = ReleaseRouter(ws)  # fail the deploy now, not in a replica restart loop
    request_tower_dir(ws, router.info(router.state()["live"]).version)

    server = None
    spread = (
        {}
        if cfg.max_replicas_per_node is None
        else {"max_replicas_per_node": cfg.max_replicas_per_node}
    )
    if cfg.release_server == "deployment":
        server = ReleaseServer.options(
            **spread,
            num_replicas=cfg.server_replicas,
            max_ongoing_requests=cfg.backend_max_ongoing_requests,
            ray_actor_options={"num_cpus": cfg.server_num_cpus},
            logging_config={"enable_access_log": cfg.access_log},
        ).bind(str(ws.root), cfg.verify_slot, cfg.log_refresh_s)
    return Ingress.options(
        **spread,
        num_replicas=cfg.ingress_replicas,
        max_ongoing_requests=cfg.ingress_max_ongoing_requests,
        max_queued_requests=cfg.ingress_max_queued_requests,
        ray_actor_options={"num_cpus": cfg.ingress_num_cpus},
        logging_config={"enable_access_log": cfg.access_log},
    ).bind(server, cfg.model_copy(update={"workspace": str(ws.root)}))


def main(
    workspace: str = typer.Option(..., help="workspace root holding models/, slots/, ..."),
    host: str = typer.Option("127.0.0.1", help="HTTP bind address (loopback by default)"),
    port: int = typer.Option(8000, help="HTTP port"),
    num_cpus: int = typer.Option(2, help="CPUs Ray may schedule on (the machines have 2)"),
    front: str = typer.Option(
        "haproxy",
        help="what listens on the port: 'haproxy' (Serve's HAProxy, balancing the ingress "
        "replicas' own HTTP servers) or 'proxy' (Serve's Python proxy actor; loopback only: "
        "it does not time out request headers)",
    ),
    throughput_optimized: bool = typer.Option(
        True, help="Ray Serve's throughput-optimized mode (RAY_SERVE_THROUGHPUT_OPTIMIZED)"
    ),
    app_args: str = typer.Option(
        "{}", help="more AppArgs fields as JSON, e.g. '{\"ingress_replicas\": 2}'"
    ),
    ray_address: str = typer.Option(
        "",
        help="deploy onto this running Ray cluster (e.g. 127.0.0.1:6379) instead of starting "
        "a local Ray: Serve's proxy on the head node only, with --front proxy",
    ),
) -> None:
    """Start a local Ray (or join ``--ray-address``), serve the app over HTTP and block until
    SIGTERM / SIGINT."""
    if front not in FRONTS:
        raise typer.BadParameter(f"--front must be one of {', '.join(FRONTS)}, not {front!r}")
    if ray_address and (front != "proxy" or throughput_optimized):
        # HAProxy and direct ingress bind per-node ports on the node they run on; a cluster's
        # nodes sharing one host would collide. Serve's proxy on the head answers for all.
        raise typer.BadParameter(
            "--ray-address runs behind Serve's proxy on the head node: add --front proxy "
            "--no-throughput-optimized"
        )
    if front == "haproxy" and not throughput_optimized:
        raise typer.BadParameter("--front haproxy needs --throughput-optimized (direct ingress)")
    if front == "proxy" and not is_loopback(host):
        # Serve's Python proxy (uvicorn) never times out a request whose headers stall: it
        # must not face the network (slowloris). HAProxy bounds them (timeout http-request).
        raise typer.BadParameter(
            f"--front proxy serves loopback only (it has no request-header timeout), not "
            f"--host {host!r}: use --front haproxy"
        )
    try:
        args = AppArgs.model_validate({**json.loads(app_args), "workspace": workspace})
    except (ValueError, TypeError) as err:  # bad JSON, or a field AppArgs refuses (named)
        raise typer.BadParameter(f"--app-args: {err}") from None
    if "ray" in sys.modules:  # Ray reads its settings when imported: they would not all apply
        raise RuntimeError("serving.app.main must run before anything imports ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline machines: no phone-home
    if ray_address:
        _serve(args, host, port, 0, 0, workspace, ray_address)
        return
    run_dir = Path(tempfile.mkdtemp(prefix="ebr-serve-"))
    ports = claim_ports()  # this server's own ports, held until it exits
    try:
        # Ray Serve's own switches, read when Ray starts (a cluster deployment with `serve
        # deploy` sets them in the cluster's environment): this server's ports and, on a
        # loopback host, a loopback-only Ray (serving.front).
        env = server_env(ports, host)
        if throughput_optimized:
            # Every ingress replica answers HTTP itself ("direct ingress"), deployments call
            # each other over gRPC, per-request stderr logs off. The HAProxy front then sends
            # each request straight to an ingress replica's port; the Python proxy actor would
            # add a hop of ~3.4 ms here (benchmarks.serve_load: /v1/search p50 14 -> 3.5 ms).
            env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
            # A draining ingress replica keeps answering this long for load balancers to
            # notice; Serve's HAProxy on this node is told at once (Ray's default, 30 s, is
            # for cloud LBs).
            env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "2"
        if front == "haproxy":
            env.update(haproxy_env(run_dir, ports, host, REQUEST_TIMEOUT_S, HEADER_TIMEOUT_S))
            # Always ours: it wraps whichever HAProxy was configured.
            os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = env.pop("RAY_SERVE_HAPROXY_BINARY_PATH")
        for key, value in env.items():
            os.environ.setdefault(key, value)  # an operator's explicit setting wins
        _serve(args, host, port, num_cpus, ports.side("ray_metrics"), workspace)
    finally:
        ports.release()
        shutil.rmtree(run_dir, ignore_errors=True)


def _serve(
    args: AppArgs,
    host: str,
    port: int,
    num_cpus: int,
    metrics_port: int,
    workspace: str,
    ray_address: str = "",
) -> None:
    import ray
    from ray import serve

    http = {"host": host, "port": port, "request_timeout_s": REQUEST_TIMEOUT_S}
    if ray_address:  # a cluster someone else runs: join it; its nodes run the replicas
        ray.init(address=ray_address)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, _metrics_export_port=metrics_port)
    try:
        serve.start(http_options=http, proxy_location="HeadOnly" if ray_address else None)
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
