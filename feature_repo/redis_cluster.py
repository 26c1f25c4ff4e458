"""A Redis Cluster of Debian's ``redis-server`` on loopback: the online store's scale-out shape
(Feast's ``redis_type: redis_cluster``) on one machine, for the demo's prod profile, the tests
and the online-store benchmark. In production the cluster is a managed one (ElastiCache,
Memorystore, a Redis operator): only ``REDIS_CLUSTER_NODES`` changes.

    python -m feature_repo.redis_cluster start --folder var/redis-cluster   # prints the nodes
    python -m feature_repo.redis_cluster stop --folder var/redis-cluster

``start`` runs ``--nodes`` servers (3 by default: every hash slot covered, no replicas), joins
them with ``redis-cli --cluster create`` and waits for ``cluster_state:ok``; a handle file in
the folder keeps their PIDs and ports, and ``stop`` stops exactly those (SHUTDOWN NOSAVE, then
SIGTERM by PID), never servers found by name.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from ebr.net import free_port

HANDLE = "cluster.json"
BUS_OFFSET = 10_000  # a node's cluster bus listens this far above its port


def _free_port(taken: list[int]) -> int:
    """A loopback port (``ebr.net.free_port``: below 20,000, so at most 55,535 as
    redis-server requires) whose cluster bus port, 10,000 higher, is free too."""
    for _ in range(1000):
        port = free_port()
        if port in taken or port + BUS_OFFSET in taken:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + BUS_OFFSET))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair (port, port + 10000) for a Redis Cluster node")


def _send(port: int, *args: str, timeout: float = 2.0) -> str:
    """One command to ``127.0.0.1:port`` over the RESP protocol (no client library needed)."""
    out = b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"*{len(args)}\r\n".encode() + out)
        reply = s.recv(65536)
        if reply[:1] == b"$":  # a bulk string: read it whole
            size = int(reply[1 : reply.index(b"\r\n")])
            while len(reply) < reply.index(b"\r\n") + 2 + size:
                more = s.recv(65536)
                if not more:
                    break
                reply += more
        return reply.decode(errors="replace")


class RedisCluster:
    """``n`` cluster-enabled ``redis-server`` processes on loopback ports, joined into one
    cluster that covers all 16,384 hash slots; data in ``folder`` (no persistence: a cache
    the materialization refills)."""

    def __init__(self, folder: Path, n: int = 3) -> None:
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            raise FileNotFoundError("redis-server / redis-cli not installed (make sysdeps)")
        if n < 3:
            raise ValueError(f"a Redis Cluster needs at least 3 primaries, got {n}")
        self.folder = Path(folder)
        self.ports: list[int] = []
        self.pids: list[int] = []
        self._binary, self._cli, self._n = binary, cli, n

    @property
    def nodes(self) -> str:
        """Feast's connection string for the cluster: ``host:port,host:port,...``."""
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self, timeout_s: float = 60.0) -> RedisCluster:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            procs = []
            for _ in range(self._n):
                port = _free_port(self.ports)
                node = self.folder / str(port)
                node.mkdir(exist_ok=True)
                cmd = [self._binary, "--bind", "127.0.0.1", "--port", str(port),
                       "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                       "--cluster-node-timeout", "5000", "--dir", str(node), "--save", "",
                       "--appendonly", "no", "--protected-mode", "yes"]  # fmt: skip
                with open(node / "redis.log", "ab") as log:
                    proc = subprocess.Popen(
                        cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    )
                self.ports.append(port)
                self.pids.append(proc.pid)
                procs.append(proc)
            deadline = time.monotonic() + timeout_s
            for port, proc in zip(self.ports, procs, strict=True):

                def answers(port: int = port, proc: subprocess.Popen[bytes] = proc) -> bool:
                    if proc.poll() is not None:  # refused to start: say why
                        tail = (self.folder / str(port) / "redis.log").read_text()[-300:]
                        raise RuntimeError(f"redis-server on port {port} exited: {tail}")
                    return "PONG" in _send(port, "PING")

                self._wait(answers, deadline, "answer")
            subprocess.run(
                [self._cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                 "--cluster-replicas", "0", "--cluster-yes"],
                check=True, capture_output=True, timeout=timeout_s,
            )  # fmt: skip
            for port in self.ports:
                self._wait(
                    lambda port=port: "cluster_state:ok" in _send(port, "CLUSTER", "INFO"),
                    deadline,
                    "reach cluster_state:ok",
                )
        except BaseException:
            self.stop()
            raise
        (self.folder / HANDLE).write_text(json.dumps({"ports": self.ports, "pids": self.pids}))
        return self

    @staticmethod
    def _wait(ok: object, deadline: float, what: str) -> None:
        while True:
            try:
                if ok():  # type: ignore[operator]
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster did not {what} in time")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop this cluster's servers, by the PIDs it started."""
        for port, pid in zip(self.ports, self.pids, strict=False):
            try:
                _send(port, "SHUTDOWN", "NOSAVE", timeout=1.0)
            except OSError:
                pass
            _end(pid)
        self.ports, self.pids = [], []
        (self.folder / HANDLE).unlink(missing_ok=True)

    @classmethod
    def attach(cls, folder: Path) -> RedisCluster:
        """The cluster ``start`` left running in ``folder`` (its handle file)."""
        handle = json.loads((Path(folder) / HANDLE).read_text())
        cluster = cls(folder, len(handle["ports"]))
        cluster.ports, cluster.pids = list(handle["ports"]), list(handle["pids"])
        return cluster

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _end(pid: int, grace_s: float = 10.0) -> None:
    """Wait for ``pid`` (a redis-server we started) to exit; SIGTERM, then SIGKILL."""
    deadline = time.monotonic() + grace_s
    signalled = False
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # our child: reap it
        except ChildProcessError:  # not our child (another process started it): poll
            done = 0 if Path(f"/proc/{pid}").exists() else pid
        if done:
            return
        if not signalled and time.monotonic() > deadline - grace_s / 2:
            _kill(pid, signal.SIGTERM)
            signalled = True
        time.sleep(0.05)
    _kill(pid, signal.SIGKILL)


def _kill(pid: int, sig: int) -> None:
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        if b"redis-server" not in cmdline.read_bytes():  # gone, or the PID was reused
            return
        os.kill(pid, sig)
    except (OSError, ProcessLookupError):
        pass


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("--folder", type=Path, default=Path("var/redis-cluster"))
    p.add_argument("--nodes", type=int, default=3)
    args = p.parse_args(argv)
    if args.action == "start":
        if (args.folder / HANDLE).is_file():
            RedisCluster.attach(args.folder).stop()  # a stale one from an earlier run
        print(RedisCluster(args.folder, args.nodes).start().nodes)
    elif (args.folder / HANDLE).is_file():
        RedisCluster.attach(args.folder).stop()


if __name__ == "__main__":
    main()
