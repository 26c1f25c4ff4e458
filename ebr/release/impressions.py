"""The served-impression log: one JSON line per served request, durable, one file per process.

The serving ingress appends a record per request it answers (``ImpressionLog.offer``, which
only enqueues and never raises); a daemon thread writes the queue to ``<workspace>/serving-log/``
and fsyncs at most every ``flush_s`` seconds (group commit: one fsync covers every record queued
since the last). Each writer process owns its file, ``impressions-<utc>-<pid>-<hex>.jsonl``, so
no two processes ever append to one file. The record contract and the reader live in
``ebr.release.impression_records`` (re-exported here). A record (position = index in
``job_ids`` + 1)::

    {"request_id": "9f1c...", "ts": "2026-11-30T10:15:00.123456+00:00", "kind": "search",
     "release": "rel-v1-20261130T101500123456", "arm": "treatment", "experiment": "v2-vs-v1",
     "member_id": 42, "request_key": null, "query": "nurse", "job_ids": [17, 4, 230]}

    with ImpressionLog(impression_dir(ws)) as log:
        log.append(record)
    df = read_impressions(ws)        # every file; a torn last line is skipped and counted

A side log never fails the requests it records. A disk error (full, read-only, EIO) makes the
log *degraded*: records keep queueing (up to ``max_pending``, then they are dropped and
counted), the writer retries with backoff in a fresh file (the failed file keeps at most a
torn last line, which the reader skips), and ``health()`` says what failed, since when and how
many records were dropped. The first write that succeeds again ends it, without a restart.

Size: the log's writer, its rotation and durability, and its reader share one record format;
record building is ``ebr.release.impression_records``.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import secrets
import threading
import time
import weakref
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from ebr.release.impression_records import (
    COLUMNS,
    FILE_GLOB,
    KINDS,
    check_record,
    impression_dir,
    read_impressions,
)

__all__ = ["COLUMNS", "FILE_GLOB", "KINDS", "ImpressionLog", "ImpressionLogFailing",
           "check_record", "impression_dir", "read_impressions"]  # fmt: skip
log = logging.getLogger(__name__)

MAX_PENDING = 50_000  # records held while the disk refuses writes (~15 MB); more are dropped
RETRY_S = (0.5, 10.0)  # first and longest wait between write attempts while writes fail
DROP_REASONS = ("unencodable", "invalid", "overflow", "closed")


class ImpressionLogFailing(RuntimeError):
    """``flush`` could not make the records durable: the writer's latest attempt failed."""


def _close_if_alive(ref: weakref.ref[ImpressionLog]) -> None:
    obj = ref()
    if obj is not None:
        obj.close()


def _iso(wall: float | None) -> str | None:
    return None if wall is None else datetime.fromtimestamp(wall, UTC).isoformat()


class ImpressionLog:
    """Append-only JSON Lines writer with a background group-commit thread (thread-safe).

    ``append`` validates and enqueues (never touches the disk; returns False when the queue
    is full and the record was dropped); ``offer`` is ``append`` for the request path: it
    never raises. ``flush`` blocks until every record appended before it is fsynced (raises
    ``ImpressionLogFailing`` when the writer's attempt fails); ``close`` flushes and stops
    the thread (also at interpreter exit). Records that cannot be written are dropped and
    counted by reason in ``health()["dropped"]``: ``unencodable`` (NaN, an object),
    ``invalid`` (refused by ``check_record`` in ``offer``), ``overflow`` (queue full while
    writes fail), ``closed`` (still unwritten when ``close`` gave up).
    """

    def __init__(self, folder: Path, flush_s: float = 0.2, max_pending: int = MAX_PENDING) -> None:
        if not flush_s >= 0:
            raise ValueError(f"flush_s must be >= 0 seconds, got {flush_s!r}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending!r}")
        self.folder, self.flush_s, self.max_pending = Path(folder), float(flush_s), max_pending
        self.path: Path | None = None  # this process's current file, created on its first write
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._pending: list[tuple[int, dict[str, Any]]] = []  # (sequence number, record)
        self._appended = self._settled = self._written = 0  # settled: written or dropped
        self._dropped = dict.fromkeys(DROP_REASONS, 0)
        self._urgent = self._closing = False
        self._failed_attempts = 0
        self._last_error: str | None = None
        self._failing_since: float | None = None  # wall time of the first failure of a run
        self._fd: int | None = None
        self._thread = threading.Thread(target=self._run, name="impression-log", daemon=True)
        self._thread.start()
        self._atexit = functools.partial(_close_if_alive, weakref.ref(self))
        atexit.register(self._atexit)

    @property
    def dropped(self) -> int:
        """Records not written, every reason together (``health()`` has them by reason)."""
        with self._cond:
            return sum(self._dropped.values())

    def health(self) -> dict[str, Any]:
        """``status`` (``ok``, or ``degraded`` while writes fail), the current ``file``,
        records ``written`` / ``pending`` / ``dropped`` (by reason), ``write_errors`` (failed
        attempts), ``last_error``, ``failing_since`` (UTC ISO) and ``writer_alive``."""
        with self._cond:
            return {
                "status": "degraded" if self._failing_since is not None else "ok",
                "file": None if self.path is None else str(self.path),
                "written": self._written, "pending": len(self._pending),
                "dropped": dict(self._dropped), "write_errors": self._failed_attempts,
                "last_error": self._last_error, "failing_since": _iso(self._failing_since),
                "writer_alive": self._thread.is_alive() or self._closing,
            }  # fmt: skip

    def append(self, record: dict[str, Any]) -> bool:
        """Validate ``record`` (ValueError naming a bad field) and queue it for the writer;
        False when the queue is full (writes failing) and the record was dropped."""
        if os.getpid() != self._pid:
            raise RuntimeError("an ImpressionLog is per process: create one after forking")
        checked = check_record(record)
        with self._cond:
            if self._closing:
                raise RuntimeError(f"impression log {self.path or self.folder} is closed")
            if len(self._pending) >= self.max_pending:
                self._dropped["overflow"] += 1
                return False
            self._appended += 1
            self._pending.append((self._appended, checked))
            # Only the first record of a batch wakes the writer: during its group-commit wait
            # it waits on time, and a wake-up per request would only contend for the GIL.
            if len(self._pending) == 1:
                self._cond.notify_all()
            return True

    def offer(self, record: dict[str, Any]) -> bool:
        """``append`` for a request path: a record that cannot be queued (invalid, log closed
        or full) is dropped, counted and logged, never raised. True when queued."""
        try:
            return self.append(record)
        except (ValueError, RuntimeError) as err:
            reason = "invalid" if isinstance(err, ValueError) else "closed"
            with self._cond:
                self._dropped[reason] += 1
            log.warning("impression %r dropped: %s", record.get("request_id"), err)
            return False

    def flush(self, timeout_s: float | None = None) -> None:
        """Block until every record appended so far is on disk (fsynced) or dropped; writes
        at once if the writer was waiting (group commit, or backoff after a failure)."""
        with self._cond:
            target, failures, self._urgent = self._appended, self._failed_attempts, True
            self._cond.notify_all()
            self._cond.wait_for(
                lambda: self._settled >= target or self._failed_attempts > failures, timeout_s
            )
            failed = self._failing_since is not None  # the latest attempt failed
            if self._settled >= target and not failed:
                return
            if failed:  # waiting, or written but not known durable (a failed fsync)
                raise ImpressionLogFailing(
                    f"impression log {self.folder}: write failed ({self._last_error}); "
                    f"{len(self._pending)} records waiting, retrying"
                )
            raise TimeoutError(f"impression log not flushed within {timeout_s} s")

    def close(self) -> None:
        """Flush, stop the writer thread and close the file (idempotent). Records the last
        attempt could not write are dropped and counted (``health()``), and logged."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        atexit.unregister(self._atexit)
        self._abandon_file()

    def __enter__(self) -> ImpressionLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self) -> None:
        last_sync = last_try = -float("inf")
        wait_s = 0.0  # backoff while failing
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending) or self._closing)
                # Group commit: wait out flush_s since the last fsync (or the backoff since
                # the last failed attempt) unless someone waits.
                while not (self._urgent or self._closing):
                    failing = self._failing_since is not None
                    due = last_try + wait_s if failing else last_sync + self.flush_s
                    left = due - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch, self._pending, self._urgent = self._pending, [], False
                closing = self._closing
                if not batch and closing:
                    return
            rest, error = self._write(batch)
            last_try = time.monotonic()
            if error is None:
                last_sync, wait_s = last_try, 0.0
            else:
                wait_s = min(max(2 * wait_s, RETRY_S[0]), RETRY_S[1])
            self._settle(rest, error, closing)

    def _settle(
        self, rest: list[tuple[int, dict[str, Any]]], error: Exception | None, closing: bool
    ) -> None:
        """Book one write attempt: ``rest`` (records it did not write) go back first in line,
        or are dropped when closing; the failure state starts or ends."""
        with self._cond:
            if error is None and self._failing_since is not None:
                log.warning("impression log %s: writing again (%s)", self.folder,
                            f"{sum(self._dropped.values())} records dropped so far")  # fmt: skip
                self._failing_since = None
            elif error is not None:
                self._failed_attempts += 1
                self._last_error = f"{type(error).__name__}: {error}"
                if self._failing_since is None:
                    self._failing_since = time.time()
                    log.error("impression log %s: write failed, retrying with backoff: %s",
                              self.folder, self._last_error)  # fmt: skip
            if closing and rest:
                self._dropped["closed"] += len(rest)
                log.error("impression log %s closed with %d records unwritten (%s)",
                          self.folder, len(rest), self._last_error)  # fmt: skip
                rest = []
            self._pending = rest + self._pending
            excess = len(self._pending) - self.max_pending
            if excess > 0:  # keep the oldest: they waited longest, the newest are dropped
                self._dropped["overflow"] += excess
                del self._pending[self.max_pending :]
            self._settled = self._pending[0][0] - 1 if self._pending else self._appended
            self._cond.notify_all()

    def _write(
        self, batch: list[tuple[int, dict[str, Any]]]
    ) -> tuple[list[tuple[int, dict[str, Any]]], Exception | None]:
        """Encode, write and fsync ``batch``: (records not written, the error or None). After
        an error that cut a record short the file is abandoned, so the partial line stays its
        torn last line (which the reader skips) and the retry writes into a new file."""
        encoded: list[tuple[tuple[int, dict[str, Any]], bytes]] = []
        for item in batch:
            try:
                text = json.dumps(item[1], allow_nan=False, separators=(",", ":")) + "\n"
            except (TypeError, ValueError) as e:
                with self._cond:
                    self._dropped["unencodable"] += 1
                log.warning("impression %r dropped: not JSON-encodable (%s)",
                            item[1].get("request_id"), e)  # fmt: skip
                continue
            encoded.append((item, text.encode()))
        data = b"".join(chunk for _, chunk in encoded)
        done = 0
        try:
            if data:
                view, fd = memoryview(data), self._file()
                while done < len(data):
                    done += os.write(fd, view[done:])
                os.fsync(fd)
        except Exception as e:  # noqa: BLE001 - booked as a failed attempt and retried
            whole, end = 0, 0
            for _, chunk in encoded:  # records whose every byte reached the file
                if end + len(chunk) > done:
                    break
                end, whole = end + len(chunk), whole + 1
            if end != done:  # a record cut short: it stays that file's torn last line
                self._abandon_file()
            with self._cond:
                self._written += whole
            return [item for item, _ in encoded[whole:]], e
        with self._cond:
            self._written += len(encoded)
        return [], None

    def _file(self) -> int:
        if self._fd is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")  # names sort by creation
            name = f"impressions-{stamp}-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
            path = self.folder / name
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            self.path = path
            dir_fd = os.open(self.folder, os.O_RDONLY)  # make the new name itself durable
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return self._fd

    def _abandon_file(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError as e:  # a close error after a write error says nothing new
                log.warning("impression log %s: close failed: %s", self.path, e)
