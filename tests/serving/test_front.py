"""The network front of a real ``python -m serving.app`` (Serve's HAProxy before the ingress
replicas' own HTTP servers): each server owns every port it uses, side ports stay on loopback,
a request's headers are timed out, and an admin call is authenticated before its body is read
(a body is measured as it arrives, never buffered whole). Configuration without a server:
``test_front_config.py``.

    cd /work/main && python -m pytest -q tests/serving/test_front.py
"""

from __future__ import annotations

import ipaddress
import os
import select
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from serving.guards import HEADER_TIMEOUT_S, REQUEST_TIMEOUT_S
from tests.serving_process import Server

MIB = 1 << 20
REPLICA = "ServeReplica:ebr:Ingress"


# ---- a real server: python -m serving.app with its HAProxy front ----


@pytest.fixture(scope="module")
def front(platform_ws: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from ebr.config import Workspace
    from feature_repo.store import copy_workspace

    ws = copy_workspace(platform_ws, tmp_path_factory.mktemp("front") / "ws")
    server = Server(Workspace(ws.root))
    yield server
    server.stop()


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _listeners(pid: int) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every TCP listener of ``pid`` and its descendants."""
    found = []
    for proc in _tree(pid):
        try:
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((proc.name(), conn.laddr.ip, conn.laddr.port))
        except psutil.Error:
            continue
    return found


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _refuses_without_ray_token(port: int) -> bool:
    """A Ray-internal gRPC server that answers an unauthenticated call UNAUTHENTICATED."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest")
        try:
            call(b"", timeout=10)
        except grpc.RpcError as err:
            return err.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[no-any-return]
    return False


def _outside_address() -> str | None:
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family == socket.AF_INET and not _loopback(addr.address):
                return str(addr.address)
    return None


@pytest.mark.slow
def test_nothing_answers_beyond_loopback_without_ray_token(front: Server) -> None:
    """Default host: the API, HAProxy's stats page and exporter, Ray's exporters and agents all
    listen on loopback; the only wider listeners are Ray's own gRPC servers, which refuse a
    call without Ray's cluster token."""
    listeners = _listeners(front.proc.pid)
    assert ("haproxy", "127.0.0.1", front.port) in listeners
    side = [(a, p) for name, a, p in listeners if name == "haproxy" and p != front.port]
    assert len(side) == 2, listeners  # stats page, Prometheus exporter
    outside = _outside_address()
    for address, port in side:
        assert _loopback(address), (address, port)
        path = "/stats" if httpx.get(f"http://127.0.0.1:{port}/stats").status_code == 200 else ""
        assert path or httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200
        if outside is not None:
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://{outside}:{port}/stats", timeout=5)
    wide = [(name, a, p) for name, a, p in listeners if not _loopback(a)]
    for name, address, port in wide:
        assert _refuses_without_ray_token(port), (name, address, port)


def _closed_or_408(sock: socket.socket) -> bool:
    try:
        data = sock.recv(4096)
    except OSError:
        return True
    return data == b"" or data.startswith(b"HTTP/1.1 408")


@pytest.mark.slow
def test_a_request_whose_headers_never_finish_is_cut(front: Server) -> None:
    """Slowloris: a connection that sends nothing, half a request line, or one header line
    every second is closed by the front (HAProxy's `timeout http-request`)."""
    starts = {"nothing": b"", "half a line": b"GET /heal", "trickle": b"GET /healthz HTTP/1.1\r\n"}
    socks = {name: socket.create_connection(("127.0.0.1", front.port)) for name in starts}
    for name, first in starts.items():
        socks[name].sendall(first)
    cut: set[str] = set()
    deadline = time.monotonic() + HEADER_TIMEOUT_S + REQUEST_TIMEOUT_S
    try:
        while len(cut) < len(socks) and time.monotonic() < deadline:
            open_socks = [s for n, s in socks.items() if n not in cut]
            readable, _, _ = select.select(open_socks, [], [], 1.0)
            for name, sock in socks.items():
                if sock in readable and name not in cut and _closed_or_408(sock):
                    cut.add(name)
            if "trickle" not in cut:
                try:
                    socks["trickle"].sendall(b"X-Slow: 1\r\n")
                except OSError:
                    cut.add("trickle")
    finally:
        for sock in socks.values():
            sock.close()
    assert cut == set(starts), f"still open: {set(starts) - cut}"
    assert front.client.get("/healthz").status_code == 200


BAD_BODIES = {
    "malformed": b'{"release": ',
    "schema": b'{"release": 5, "no_such_field": true}',
    "duplicate keys": b'{"release": "a", "release": "b"}',
    "deep": b"[" * 5000 + b"]" * 5000,
    "2 MiB": b'{"pad": "' + b"x" * (2 * MIB) + b'"}',
}
ADMIN_POSTS = [
    "/admin/promote", "/admin/rollback", "/admin/experiments", "/admin/reload",
    "/admin/releases/rel-v1-20261130T101500123456/warm",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("path", ADMIN_POSTS)
@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Basic dGVzdA=="])
def test_an_admin_call_is_authenticated_before_its_body_is_read(
    front: Server, path: str, auth: str | None
) -> None:
    headers = {"content-type": "application/json", **({"authorization": auth} if auth else {})}
    for name, body in BAD_BODIES.items():
        resp = front.client.post(path, content=body, headers=headers)
        assert resp.status_code == 401, (name, resp.status_code, resp.text[:300])
        assert "loc" not in resp.text and "release" not in resp.text  # nothing about the schema


def _send_chunked(port: int, path: str, token: str | None, pids: list[int]) -> tuple[int, str, int]:
    """Stream up to 64 MiB of chunked body to ``path`` until the server answers: (MiB sent,
    the answer's status line, peak RSS growth in bytes of processes ``pids`` while sending)."""
    procs = [psutil.Process(pid) for pid in pids]
    base = sum(p.memory_info().rss for p in procs)
    peak = 0
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += f"Authorization: Bearer {token}\r\n" if token else ""
    head += "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    chunk = b"%x\r\n" % MIB + b" " * MIB + b"\r\n"
    sent, answer = 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head.encode())
        for _ in range(64):
            try:
                sock.sendall(chunk)
            except OSError:
                break
            sent += 1
            peak = max(peak, sum(p.memory_info().rss for p in procs) - base)
            if select.select([sock], [], [], 0.05)[0]:
                break
        if sent == 64:
            sock.sendall(b"0\r\n\r\n")
        try:
            answer = sock.recv(4096)
        except OSError:
            pass
    return sent, answer.split(b"\r\n")[0].decode(errors="replace"), peak


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "token", "status"),
    [
        ("/admin/reload", None, 401),
        ("/admin/promote", "wrong", 401),
        ("/admin/promote", "ADMIN", 413),
        ("/admin/experiments", "ADMIN", 413),
        ("/v1/search", None, 413),
    ],
)
def test_a_64_mib_chunked_body_is_refused_as_it_arrives(
    front: Server, path: str, token: str | None, status: int
) -> None:
    replicas = front.processes(REPLICA)
    assert replicas, "no ingress replica found"
    token = front.token if token == "ADMIN" else token
    sent, answer, peak = _send_chunked(front.port, path, token, replicas)
    assert f" {status} " in answer, (sent, answer)
    assert sent <= 8, f"the server read {sent} MiB before answering: {answer}"
    assert peak < 48 * MIB, f"ingress replica RSS grew {peak / MIB:.0f} MiB"
    assert front.client.get("/healthz").status_code == 200


# ---- two servers on one host ----


def _ports(server: Server) -> set[int]:
    return {port for _, _, port in _listeners(server.proc.pid)}


@pytest.mark.slow
def test_a_server_with_its_replica_down_is_never_answered_by_another(
    platform_ws: Path, tmp_path: Path
) -> None:
    """Two servers on one host own disjoint ports; while one server's ingress replica is down
    (killed: Serve restarts it, HAProxy falls back to the server's own Serve proxy), its
    requests wait for its own replica: never another workspace's server (whose admin token
    differs, so an admin call it answered would be a 401)."""
    from ebr.config import Workspace
    from feature_repo.store import copy_workspace

    one = Server(Workspace(copy_workspace(platform_ws, tmp_path / "one").root), "token-one")
    try:
        two = Server(Workspace(copy_workspace(platform_ws, tmp_path / "two").root), "token-two")
        try:
            assert not _ports(one) & _ports(two)
            [replica] = one.processes(REPLICA)
            os.kill(replica, signal.SIGKILL)  # a process of the server this test started
            auth = {"Authorization": f"Bearer {one.token}"}
            statuses: list[int] = []
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                try:
                    resp = one.client.post("/admin/reload", headers=auth, timeout=60)
                    statuses.append(resp.status_code)
                except httpx.TransportError:
                    statuses.append(0)
                back = [pid for pid in one.processes(REPLICA) if pid != replica]
                if statuses[-1] == 200 and back:
                    break
                time.sleep(0.2)
            assert 401 not in statuses, statuses
            assert statuses[-1] == 200, statuses
        finally:
            two.stop()
    finally:
        one.stop()
