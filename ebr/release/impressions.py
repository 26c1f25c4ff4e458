"""The served-impression log: one JSON line per served request, durable, one file per process.

The serving ingress appends a record per request it answers (``ImpressionLog.append``, which
only enqueues); a daemon thread writes the queue to ``<workspace>/serving-log/`` and fsyncs at
most every ``flush_s`` seconds (group commit: one fsync covers every record queued since the
last). Each writer process owns its file, ``impressions-<utc>-<pid>-<hex>.jsonl``, so no two
processes ever append to one file. A record (position = index in ``job_ids`` + 1)::

    {"request_id": "9f1c...", "ts": "2026-11-30T10:15:00.123456+00:00", "kind": "search",
     "release": "rel-v1-20261130T101500123456", "arm": "treatment", "experiment": "v2-vs-v1",
     "member_id": 42, "request_key": null, "query": "nurse", "job_ids": [17, 4, 230]}

    with ImpressionLog(impression_dir(ws)) as log:
        log.append(record)
    df = read_impressions(ws)        # every file; a torn last line is skipped and counted
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
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from numbers import Integral
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd

from ebr.config import Workspace
from ebr.release.record import check_release_id

log = logging.getLogger(__name__)

KINDS = ("search", "recommendations")
COLUMNS = ("request_id", "ts", "kind", "release", "arm", "experiment", "member_id",
           "request_key", "query", "job_ids")  # fmt: skip
FILE_GLOB = "impressions-*.jsonl"


def impression_dir(ws: Workspace) -> Path:
    """Where every serving process writes its impression file: ``<root>/serving-log``."""
    return ws.root / "serving-log"


def _bad(field: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"impression record field {field!r} must be {expected}, got {value!r}")


def check_record(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``record`` with ``job_ids`` as plain ints and ``ts`` filled in (now, UTC)
    when absent; a ValueError naming the field for a missing or ill-typed one. Extra keys are
    kept. Values are not JSON-encoded here (the writer thread does that, off the request)."""
    if not isinstance(record, dict):
        raise ValueError(f"an impression record must be a dict, got {type(record).__name__}")
    missing = [k for k in COLUMNS if k not in record and k != "ts"]
    if missing:
        raise ValueError(f"impression record lacks required field(s) {missing}")
    out = dict(record)
    out.setdefault("ts", datetime.now(UTC).isoformat())
    if not isinstance(out["request_id"], str) or not out["request_id"]:
        raise _bad("request_id", "a non-empty string", out["request_id"])
    try:
        stamp = datetime.fromisoformat(out["ts"]) if isinstance(out["ts"], str) else None
    except ValueError:
        stamp = None
    if stamp is None or stamp.utcoffset() != timedelta(0):
        raise _bad("ts", "an ISO-8601 UTC string (offset +00:00 or Z)", out["ts"])
    if out["kind"] not in KINDS:
        raise _bad("kind", f"one of {KINDS}", out["kind"])
    try:
        check_release_id(out["release"])
    except ValueError as e:
        raise _bad(
            "release", "a release id like rel-v2-20261130T101500123456", out["release"]
        ) from e
    if (out["arm"] is None) != (out["experiment"] is None):
        raise _bad("arm", "set exactly when 'experiment' is", out["arm"])
    for key in ("arm", "experiment", "request_key"):
        if out[key] is not None and (not isinstance(out[key], str) or not out[key]):
            raise _bad(key, "None or a non-empty string", out[key])
    member = out["member_id"]
    if member is not None and (isinstance(member, bool) or not isinstance(member, Integral)):
        raise _bad("member_id", "None or an int", member)
    out["member_id"] = None if member is None else int(member)
    ids = out["job_ids"]
    if not isinstance(ids, Sequence | np.ndarray) or isinstance(ids, str | bytes):
        raise _bad("job_ids", "a list of ints (shown order)", ids)
    if not all(isinstance(j, Integral) and not isinstance(j, bool) and int(j) >= 0 for j in ids):
        raise _bad("job_ids", "a list of job ids >= 0 (shown order; no -1 padding)", ids)
    out["job_ids"] = [int(j) for j in ids]  # numpy ints (FAISS ids) are not JSON-encodable
    return out


def _close_if_alive(ref: weakref.ref[ImpressionLog]) -> None:
    obj = ref()
    if obj is not None:
        obj.close()


class ImpressionLog:
    """Append-only JSON Lines writer with a background group-commit thread (thread-safe).

    ``append`` validates and enqueues (never touches the disk); ``flush`` blocks until every
    record appended before it is fsynced; ``close`` flushes and stops the thread (also at
    interpreter exit). A record that cannot be JSON-encoded (NaN, an object) is dropped,
    counted in ``dropped`` and logged; the records after it are written. A disk error stops
    the writer and is raised by the next ``append`` / ``flush`` / ``close``.
    """

    def __init__(self, folder: Path, flush_s: float = 0.2) -> None:
        if not flush_s >= 0:
            raise ValueError(f"flush_s must be >= 0 seconds, got {flush_s!r}")
        self.folder, self.flush_s = Path(folder), float(flush_s)
        self.path: Path | None = None  # this process's file, created on the first write
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._pending: list[tuple[int, dict[str, Any]]] = []
        self._appended = self._durable = self._dropped = 0
        self._urgent = self._closing = False
        self._error: BaseException | None = None
        self._fd: int | None = None
        self._thread = threading.Thread(target=self._run, name="impression-log", daemon=True)
        self._thread.start()
        self._atexit = functools.partial(_close_if_alive, weakref.ref(self))
        atexit.register(self._atexit)

    @property
    def dropped(self) -> int:
        """Records that could not be JSON-encoded and were not written."""
        with self._cond:
            return self._dropped

    def append(self, record: dict[str, Any]) -> None:
        """Validate ``record`` (ValueError naming a bad field) and queue it for the writer."""
        if os.getpid() != self._pid:
            raise RuntimeError("an ImpressionLog is per process: create one after forking")
        checked = check_record(record)
        with self._cond:
            self._raise_if_failed()
            if self._closing:
                raise RuntimeError(f"impression log {self.path or self.folder} is closed")
            self._appended += 1
            self._pending.append((self._appended, checked))
            # Only the first record of a batch wakes the writer: during its group-commit wait
            # it waits on time, and a wake-up per request would only contend for the GIL.
            if len(self._pending) == 1:
                self._cond.notify_all()

    def flush(self, timeout_s: float | None = None) -> None:
        """Block until every record appended so far is on disk (fsynced) or dropped."""
        with self._cond:
            target, self._urgent = self._appended, True
            self._cond.notify_all()
            ok = self._cond.wait_for(
                lambda: self._durable >= target or self._error is not None, timeout_s
            )
            self._raise_if_failed()
            if not ok:
                raise TimeoutError(f"impression log not flushed within {timeout_s} s")

    def close(self) -> None:
        """Flush, stop the writer thread and close the file (idempotent)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        atexit.unregister(self._atexit)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with self._cond:
            self._raise_if_failed()

    def __enter__(self) -> ImpressionLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"impression log writer failed: {self._error!r}") from self._error

    def _run(self) -> None:
        last_sync = -float("inf")
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending) or self._closing)
                # Group commit: wait out flush_s since the last fsync unless someone waits.
                while not (self._urgent or self._closing):
                    left = last_sync + self.flush_s - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch, self._pending, self._urgent = self._pending, [], False
                if not batch and self._closing:
                    return
            try:
                dropped = self._write(batch)
            except BaseException as e:  # a disk error: surfaced to callers, not swallowed
                with self._cond:
                    self._error = e
                    self._cond.notify_all()
                return
            last_sync = time.monotonic()
            with self._cond:
                self._durable, self._dropped = batch[-1][0], self._dropped + dropped
                self._cond.notify_all()

    def _write(self, batch: list[tuple[int, dict[str, Any]]]) -> int:
        """Encode, write and fsync ``batch``; returns how many records were dropped."""
        lines, dropped = [], 0
        for _, record in batch:
            try:
                lines.append(json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n")
            except (TypeError, ValueError) as e:
                dropped += 1
                log.warning("impression %r dropped: not JSON-encodable (%s)",
                            record.get("request_id"), e)  # fmt: skip
        data = "".join(lines).encode()
        if not data:
            return dropped
        if self._fd is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            name = f"impressions-{stamp}-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
            self.path = self.folder / name
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            dir_fd = os.open(self.folder, os.O_RDONLY)  # make the new name itself durable
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        os.fsync(self._fd)
        return dropped


def _read_file(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of one file in written order, and 1 if its last line is torn (else 0)."""
    lines = path.read_bytes().split(b"\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records, torn = [], 0
    for i, line in enumerate(lines[: last + 1]):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            if i == last:  # a crash mid-write (or a writer still writing) leaves this
                log.warning("%s: torn last line skipped (%d bytes)", path, len(line))
                torn = 1
                continue
            raise ValueError(f"{path}:{i + 1} is not a JSON record: {e}") from e
        if not isinstance(record, dict) or not set(COLUMNS) <= set(record):
            raise ValueError(f"{path}:{i + 1} is not an impression record: {line[:200]!r}")
        records.append(record)
    return records, torn


def read_impressions(source: Workspace | Path) -> pd.DataFrame:
    """Every impression record under ``impression_dir(ws)`` (or the folder ``source``): one row
    per request in file-name then written order, the columns of ``COLUMNS`` (``ts`` as UTC
    timestamps, ``member_id`` as nullable Int64, ``job_ids`` as lists) plus any extra keys.
    ``df.attrs``: ``torn_lines`` (skipped torn last lines) and ``files``. A missing folder is
    an empty log; a corrupt line that is not a file's last raises ValueError."""
    folder = impression_dir(source) if isinstance(source, Workspace) else Path(source)
    files = sorted(folder.glob(FILE_GLOB)) if folder.is_dir() else []
    records: list[dict[str, Any]] = []
    torn = 0
    for path in files:
        got, t = _read_file(path)
        records += got
        torn += t
    df = pd.DataFrame(records) if records else pd.DataFrame(columns=list(COLUMNS))
    extra = [c for c in df.columns if c not in COLUMNS]
    df = df.reindex(columns=[*COLUMNS, *extra])
    df["ts"] = pd.to_datetime(df["ts"], utc=True, format="ISO8601")
    df["member_id"] = df["member_id"].astype("Int64")
    df.attrs.update(torn_lines=torn, files=len(files))
    return df
