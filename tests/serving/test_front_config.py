"""Serve's HAProxy front as ``python -m serving.app`` configures it, without starting a
server: Ray's real config template, hardened (side binds on the server's host, a header
timeout) and validated by HAProxy itself; and what Serve's own parsers make of a client's
request-timeout headers after the front middlewares.

    cd /work/main && python -m pytest -q tests/serving/test_front_config.py
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.front import harden, write_wrapper
from serving.guards import HEADER_TIMEOUT_S, REQUEST_TIMEOUT_S, front_middlewares

# ---- HAProxy's config: side binds and the header timeout (Ray's real template) ----


def _ray_config(tmp_path: Path, host: str) -> Path:
    """The HAProxy config Ray's HAProxyManager writes for an HTTP front on ``host``."""
    from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig
    from ray.serve.config import HTTPOptions

    cfg = HAProxyConfig(
        http_options=HTTPOptions(host=host, port=21000),
        socket_path=str(tmp_path / "admin.sock"),
        server_state_base=str(tmp_path),
        server_state_file=str(tmp_path / "server-state"),
        metrics_socket_path=str(tmp_path / "metrics.sock"),
        stats_port=21001,
        metrics_port=21002,
    )
    api = HAProxyApi(cfg, config_file_path=str(tmp_path / "haproxy.cfg"))
    api._generate_config_file_internal()
    return tmp_path / "haproxy.cfg"


def _binds(config: str) -> dict[str, str]:
    """port -> bind address of every ``bind`` line."""
    binds = [line.split()[1] for line in config.splitlines() if line.split()[:1] == ["bind"]]
    return {b.rpartition(":")[2]: b.rpartition(":")[0] for b in binds}


@pytest.mark.parametrize("host", ["127.0.0.1", "192.0.2.7", "::1"])
def test_side_ports_bind_to_the_server_host(tmp_path: Path, host: str) -> None:
    ray_cfg = _ray_config(tmp_path, host).read_text()
    assert _binds(ray_cfg)["21001"] in ("*", "") and _binds(ray_cfg)["21002"] in ("*", "")
    binds = _binds(harden(ray_cfg, host, 10))
    assert binds == {"21000": host, "21001": host, "21002": host}


def test_a_wildcard_server_host_leaves_binds_alone(tmp_path: Path) -> None:
    ray_cfg = _ray_config(tmp_path, "0.0.0.0").read_text()
    assert _binds(harden(ray_cfg, "*", 10)) == _binds(ray_cfg)


def test_exactly_one_header_timeout(tmp_path: Path) -> None:
    ray_cfg = _ray_config(tmp_path, "127.0.0.1").read_text()
    twice = harden(harden(ray_cfg, "127.0.0.1", 10), "127.0.0.1", 7)
    lines = [line.split() for line in twice.splitlines()]
    assert [w for w in lines if w[:2] == ["timeout", "http-request"]] == [
        ["timeout", "http-request", "7s"]
    ]
    with pytest.raises(ValueError, match="defaults"):
        harden("global\n    maxconn 10\nlisten stats\n  bind *:1\n", "127.0.0.1", 10)


def test_the_wrapper_hardens_the_config_and_runs_haproxy(tmp_path: Path) -> None:
    """The executable Ray runs as HAProxy: HAProxy itself validates the hardened config."""
    config = _ray_config(tmp_path, "127.0.0.1")
    wrapper = write_wrapper(tmp_path, "127.0.0.1", HEADER_TIMEOUT_S)
    check = subprocess.run(
        [str(wrapper), "-c", "-f", str(config)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "Configuration file is valid" in check.stdout
    text = config.read_text()
    assert set(_binds(text).values()) == {"127.0.0.1"}
    assert f"timeout http-request {HEADER_TIMEOUT_S:g}s" in text


# ---- a client may shorten its request timeout, never lift it ----


def _through_front_middlewares(headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The request headers Serve reads (as Serve does: a dict, the last value of a name wins)
    after the middlewares it is given through RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH."""
    seen: list[list[tuple[bytes, bytes]]] = []

    async def serve_side(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["headers"])

    app: ASGIApp = serve_side
    for middleware in front_middlewares():
        app = middleware.cls(app, *middleware.args, **middleware.kwargs)
    scope = {"type": "http", "headers": [(b"host", b"x"), *headers]}
    asyncio.run(app(scope, None, None))  # type: ignore[arg-type]
    return dict(seen[0])


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-request-timeout-seconds", b"0")],
        [(b"x-request-timeout-seconds", b"-1")],
        [(b"x-request-timeout-seconds", b"1e9")],
        [(b"x-request-timeout-seconds", b"inf")],
        [(b"x-request-timeout-seconds", b"nan")],
        [(b"x-request-timeout-seconds", b"31")],
        [(b"x-request-timeout-seconds", b"soon")],
        [(b"x-request-timeout-seconds", b"5"), (b"x-request-timeout-seconds", b"0")],
        [(b"x-request-disconnect-disabled", b"?1")],
        [],
    ],
)
def test_a_client_cannot_lift_the_request_timeout(headers: list[tuple[bytes, bytes]]) -> None:
    """What Serve's own parsers make of a request's headers after the front middlewares."""
    from ray.serve._private.http_util import (
        parse_disconnect_disabled_header,
        parse_request_timeout_header,
    )

    seen = _through_front_middlewares(headers)
    timeout = parse_request_timeout_header(seen, REQUEST_TIMEOUT_S)
    assert timeout is not None and 0 < timeout <= REQUEST_TIMEOUT_S, timeout
    assert not parse_disconnect_disabled_header(seen)
    assert seen[b"host"] == b"x"  # other headers pass


@pytest.mark.parametrize("value", [b"2.5", b"30", b"0.001"])
def test_a_client_may_shorten_its_request_timeout(value: bytes) -> None:
    seen = _through_front_middlewares([(b"x-request-timeout-seconds", value)])
    assert seen[b"x-request-timeout-seconds"] == value
