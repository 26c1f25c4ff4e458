"""The impression log is a side log: a disk error degrades it (counted, reported by
``health()``), never fails the caller, and it recovers by itself once it can write again, with
every record written once (the failed file keeps at most a torn last line)."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ebr.release.impressions import ImpressionLog, ImpressionLogFailing, read_impressions

DEADLINE_S = 30.0


def rec(request_id: str) -> dict[str, Any]:
    return {"request_id": request_id, "kind": "search", "release": "rel-v1-20260101T000000000001",
            "arm": None, "experiment": None, "member_id": 7, "request_key": None,
            "query": "nurse", "job_ids": [1, 2, 3]}  # fmt: skip


def wait_for(cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


class Disk:
    """Faults of the disk under one log, switched on and off: ``full`` (a write gets a few
    bytes in, then ENOSPC), ``eio`` (fsync fails), ``gone`` (the log's folder is a file)."""

    def __init__(self, kind: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.kind, self.folder, self.on, self.cut = kind, folder, False, False
        self.log: ImpressionLog | None = None
        real_write, real_fsync = os.write, os.fsync

        def ours(fd: int) -> bool:
            return self.on and self.log is not None and fd == self.log._fd

        def write(fd: int, data: Any) -> int:
            if ours(fd) and kind == "full":
                if not self.cut:  # the write that fills the disk gets a few bytes in
                    self.cut = True
                    return real_write(fd, bytes(data[:7]))
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        def fsync(fd: int) -> None:
            if ours(fd) and kind == "eio":
                raise OSError(errno.EIO, "Input/output error")
            real_fsync(fd)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "fsync", fsync)

    def fail(self) -> None:
        self.on, self.cut = True, False
        if self.kind == "gone":
            self.folder.parent.mkdir(parents=True, exist_ok=True)
            self.folder.write_text("not a folder")

    def heal(self) -> None:
        self.on = False
        if self.kind == "gone":
            self.folder.unlink()


@pytest.fixture(params=["full", "eio", "gone"])
def disk(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Disk]:
    yield Disk(request.param, tmp_path / "serving-log", monkeypatch)


def test_a_disk_error_degrades_the_log_and_it_recovers_by_itself(disk: Disk) -> None:
    log = disk.log = ImpressionLog(disk.folder, flush_s=0.01)
    try:
        if disk.kind == "gone":  # the folder is unusable before the first write
            disk.fail()
        assert log.append(rec("before"))
        if disk.kind != "gone":
            log.flush(10)
            disk.fail()
        for i in range(5):  # the request path: never raises, whatever the disk does
            assert log.offer(rec(f"during-{i}"))
        wait_for(lambda: log.health()["status"] == "degraded")
        health = log.health()
        assert health["write_errors"] >= 1 and health["writer_alive"]
        want = {"full": "No space left", "eio": "Input/output", "gone": "Error"}[disk.kind]
        assert want in health["last_error"], health
        with pytest.raises(ImpressionLogFailing, match="write failed"):
            log.flush(10)
        disk.heal()
        assert log.offer(rec("after"))
        # No flush, no restart: the writer's own retry brings it back.
        wait_for(lambda: log.health()["status"] == "ok" and log.health()["pending"] == 0)
        log.flush(10)
        assert log.health()["writer_alive"] and log.dropped == 0
    finally:
        log.close()
    df = read_impressions(disk.folder)
    ids = ["before", *[f"during-{i}" for i in range(5)], "after"]
    if disk.kind == "eio":  # written before fsync failed: kept in that file, never re-written
        assert sorted(df["request_id"]) == sorted(ids)
    else:
        assert df["request_id"].tolist() == ids  # each once, in order
    assert df.attrs["torn_lines"] == (1 if disk.kind == "full" else 0)  # the cut line, skipped


def test_a_full_queue_drops_and_counts_and_close_never_hangs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = Disk("full", tmp_path / "log", monkeypatch)
    log = disk.log = ImpressionLog(disk.folder, flush_s=0.01, max_pending=5)
    log.append(rec("first"))
    log.flush(10)
    disk.fail()
    queued = [log.offer(rec(f"r{i}")) for i in range(40)]
    assert not all(queued)  # past max_pending while failing: dropped at once, not queued
    health = log.health()
    assert health["dropped"]["overflow"] >= 1 and health["pending"] <= 5
    log.close()  # still failing: gives up on what is left, counted
    health = log.health()
    assert health["dropped"]["closed"] >= 1
    assert sum(health["dropped"].values()) + health["written"] == 41


def test_offer_never_raises_for_a_bad_record_or_a_closed_log(tmp_path: Path) -> None:
    log = ImpressionLog(tmp_path)
    assert not log.offer({**rec("x"), "kind": "feed"})
    log.close()
    assert not log.offer(rec("late"))
    assert log.health()["dropped"] == {"unencodable": 0, "invalid": 1, "overflow": 0, "closed": 1}
    with pytest.raises(RuntimeError, match="closed"):  # append still says so
        log.append(rec("late"))
