"""``python -m serving.app`` refuses bad options before it starts anything, and each server
claims ports of its own and hands every port Ray would default to from them (two servers on
one machine never share one)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from serving.app import main
from serving.front import (
    BLOCK,
    INGRESS_PORTS,
    PORT_CEIL,
    PORT_FLOOR,
    claim_ports,
    haproxy_env,
    is_loopback,
    server_env,
)

# Every setting through which Ray would otherwise use a fixed port (ray.serve._private.
# constants, ray.autoscaler._private.constants, ray.dashboard.consts).
RAY_PORT_SETTINGS = [
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
    "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT",
    "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT", "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT",
    "AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT",
    "RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT",
]  # fmt: skip


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--app-args", '{"ingress_replicas": 0}'], "ingress_replicas"),
        (["--app-args", '{"release_server": "gpu"}'], "release_server"),
        (["--app-args", '{"no_such_field": 1}'], "no_such_field"),
        (["--app-args", "{not json"], "--app-args"),
        (["--front", "nginx"], "--front"),
        (["--front", "haproxy", "--no-throughput-optimized"], "direct ingress"),
        (["--front", "proxy", "--host", "0.0.0.0"], "'0.0.0.0'"),
        (["--front", "proxy", "--host", "192.0.2.7"], "loopback"),
    ],
)
def test_bad_options_fail_before_ray_starts(tmp_path: Path, extra: list[str], named: str) -> None:
    app = typer.Typer()
    app.command()(main)
    result = CliRunner().invoke(app, ["--workspace", str(tmp_path), *extra])
    assert result.exit_code == 2, result.output
    assert named in " ".join(result.output.split()), result.output


def _ports(env: dict[str, str]) -> set[int]:
    """Every port ``env`` hands to Ray (ranges expanded)."""
    ports = {int(env[k]) for k in RAY_PORT_SETTINGS if "_MIN_" not in k and "_MAX_" not in k}
    for proto in ("HTTP", "GRPC"):
        lo = int(env[f"RAY_SERVE_DIRECT_INGRESS_MIN_{proto}_PORT"])
        ports |= set(range(lo, int(env[f"RAY_SERVE_DIRECT_INGRESS_MAX_{proto}_PORT"]) + 1))
    return ports


def test_two_servers_get_disjoint_ports_and_files(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    one, two = claim_ports(locks), claim_ports(locks)
    try:
        envs = []
        for block, name in ((one, "a"), (two, "b")):
            run_dir = tmp_path / name
            run_dir.mkdir()
            env = {
                **server_env(block, "127.0.0.1"),
                **haproxy_env(run_dir, block, "127.0.0.1", 30, 10),
            }
            assert set(RAY_PORT_SETTINGS) <= set(env)
            ports = _ports(env)
            # every port is the server's own: inside its block, none used twice
            assert ports <= set(range(block.first, block.first + BLOCK))
            assert len(ports) == 6 + 2 * INGRESS_PORTS  # no port handed out twice
            suffixes = ("_LOC", "_PATH", "_FILE", "_BASE")
            files = [v for k, v in env.items() if "HAPROXY_" in k and k.endswith(suffixes)]
            assert len(files) == 6 and all(f.startswith(str(run_dir)) for f in files)
            # no port shared through SO_REUSEPORT; a client cannot lift its timeout
            assert env["SERVE_SOCKET_REUSE_PORT_ENABLED"] == "0"
            assert env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == (
                "serving.guards:front_middlewares"
            )
            envs.append(env)
        assert not _ports(envs[0]) & _ports(envs[1])
        assert PORT_FLOOR <= min(one.first, two.first) and max(one.first, two.first) < PORT_CEIL
    finally:
        one.release()
        two.release()


def test_a_released_block_is_claimed_again(tmp_path: Path) -> None:
    first = claim_ports(tmp_path)
    start = first.first
    first.release()
    again = claim_ports(tmp_path)
    try:
        assert again.first == start
    finally:
        again.release()


def test_a_block_with_a_port_in_use_is_skipped(tmp_path: Path) -> None:
    probe = claim_ports(tmp_path)
    start = probe.first
    probe.release()
    with socket.socket() as busy:  # someone else (not a server) listens inside that block
        busy.bind(("127.0.0.1", start + BLOCK // 2))
        busy.listen()
        block = claim_ports(tmp_path)
        try:
            assert block.first != start
            assert not block.first <= start + BLOCK // 2 < block.first + BLOCK
        finally:
            block.release()


@pytest.mark.parametrize(
    "host, loopback",
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("127.0.0.2", True),
     ("0.0.0.0", False), ("::", False), ("192.0.2.7", False), ("example.org", False)],
)  # fmt: skip
def test_ray_runs_loopback_only_unless_the_server_binds_elsewhere(
    tmp_path: Path, host: str, loopback: bool
) -> None:
    assert is_loopback(host) is loopback
    block = claim_ports(tmp_path)
    try:
        env = server_env(block, host)
        assert (env.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0") is loopback
    finally:
        block.release()
