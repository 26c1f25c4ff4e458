"""Redis Streams as the durable event stream (the adapter; the contract is ``ebr.stream.events``).

    events   XADD ebr:events * event <json>           (producers)
    group    XREADGROUP GROUP ebr-embedder <consumer> (the streaming job; at-least-once)
    ack      XACK after every sink has the event      (``Broker.ack``)
    retry    XAUTOCLAIM entries left pending past ``claim_idle_ms`` (a failed poll, a crashed
             worker); XPENDING counts the deliveries of each (``Broker.deliveries``)
    dead     XADD ebr:events:dead * entry_id reason raw, then XACK (bad events never block)

``RedisServer`` starts a real ``redis-server`` on loopback with its append-only file fsynced on
every write, so nothing acknowledged is lost when Redis is killed and restarted (the demo and
the tests start it; nothing assumes one is running). Production: point ``url`` at a managed
Redis, or use Kafka / Pub/Sub through Beam's own IO connectors.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from ebr.net import free_port
from ebr.stream.events import BadEvent

STREAM = "ebr:events"
DEAD = "ebr:events:dead"
GROUP = "ebr-embedder"


class Broker:
    """One consumer of the event stream's consumer group (no state of its own besides the Redis
    client, whose connection pool is thread-safe: the job shares one per process)."""

    def __init__(self, url: str, consumer: str, stream: str = STREAM, group: str = GROUP,
                 dead: str = DEAD, claim_idle_ms: int = 30_000) -> None:  # fmt: skip
        self.client = redis.Redis.from_url(url)
        self.stream, self.group, self.dead, self.consumer = stream, group, dead, consumer
        self.claim_idle_ms = claim_idle_ms
        try:
            self.client.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.ResponseError as err:  # the group exists: keep its position
            if "BUSYGROUP" not in str(err):
                raise

    def produce(self, fields: Mapping[str, str]) -> str:
        """Append one event entry; returns its id (durable once Redis has fsynced its AOF)."""
        return self.client.xadd(self.stream, dict(fields)).decode()  # type: ignore[union-attr]

    def read(
        self, count: int = 256, block_ms: int | None = 1000
    ) -> list[tuple[str, dict[Any, Any]]]:
        """Up to ``count`` entries for this consumer: first those other consumers left pending
        too long (a crashed worker's), then new ones (waiting up to ``block_ms``; None: not
        at all)."""
        _, claimed, _ = self.client.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=count
        )  # type: ignore[misc]
        entries = [(eid.decode(), fields) for eid, fields in claimed if fields]
        if len(entries) < count and block_ms != 0:  # XREADGROUP BLOCK 0 waits forever
            got = self.client.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=count - len(entries),
                block=block_ms,
            )  # fmt: skip
            for _, rows in got or []:  # type: ignore[union-attr]
                entries += [(eid.decode(), fields) for eid, fields in rows]
        return entries

    def pending(self) -> list[tuple[str, dict[Any, Any]]]:
        """This consumer's entries delivered but not acknowledged (re-read after a restart)."""
        got = self.client.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=10_000)
        return [(eid.decode(), f) for _, rows in got or [] for eid, f in rows if f]  # type: ignore[union-attr]

    def deliveries(self, entry_ids: list[str]) -> dict[str, int]:
        """entry id -> how many times the group delivered it (XPENDING: reads, history re-reads
        and claims each count), for the ids still pending; one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for eid in entry_ids:
            pipe.xpending_range(self.stream, self.group, eid, eid, 1)
        return {
            row["message_id"].decode(): int(row["times_delivered"])
            for rows in pipe.execute()
            for row in rows
        }

    def ack(self, entry_ids: list[str]) -> int:
        """Acknowledge entries every sink has applied; returns how many were pending."""
        return int(self.client.xack(self.stream, self.group, *entry_ids)) if entry_ids else 0  # type: ignore[arg-type]

    def dead_letter(self, bad: list[BadEvent], ack: bool = True) -> None:
        """Keep each bad entry with its reason in the dead-letter stream, then acknowledge it
        (``ack``; else its poll's acknowledgement does): the stream keeps flowing."""
        if not bad:
            return
        pipe = self.client.pipeline(transaction=True)
        for b in bad:
            pipe.xadd(self.dead, b.to_fields())
        if ack:
            pipe.xack(self.stream, self.group, *[b.entry_id for b in bad])
        pipe.execute()

    def dead_letters(self) -> list[dict[str, str]]:
        return [{k.decode(): v.decode() for k, v in f.items()}
                for _, f in self.client.xrange(self.dead)]  # type: ignore[union-attr]  # fmt: skip


def progress(client: redis.Redis, stream: str = STREAM, group: str = GROUP) -> tuple[int, int]:
    """(entries in ``stream``, entries ``group`` has delivered and acknowledged): drained when
    the two are equal."""
    length = int(client.xlen(stream))  # type: ignore[arg-type]
    groups = {g["name"].decode(): g for g in client.xinfo_groups(stream)}  # type: ignore[union-attr]
    found = groups.get(group)
    if found is None:
        return length, 0
    return length, int(found.get("entries-read") or 0) - int(found["pending"])


class RedisServer:
    """A ``redis-server`` on loopback, its data (append-only file, fsync always) in ``folder``;
    ``detach`` starts it in its own session, to outlive the process that started it."""

    def __init__(self, folder: Path, port: int | None = None, detach: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (make sysdeps installs it)")
        self.folder, self.port = Path(folder), port or free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._cmd = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir",
                     str(self.folder), "--appendonly", "yes", "--appendfsync", "always",
                     "--save", "", "--protected-mode", "yes"]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self._detach = detach  # its own session: it outlives this process (a launched job's)
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 - the server process owns it
        self.proc = subprocess.Popen(
            self._cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=self._detach
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def kill(self) -> None:
        """SIGKILL (a crash: no shutdown save), by this server's PID."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None


@contextmanager
def redis_server(folder: Path) -> Iterator[RedisServer]:
    server = RedisServer(folder)
    try:
        yield server
    finally:
        server.stop()
