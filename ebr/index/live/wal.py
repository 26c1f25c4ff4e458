"""The durable, append-only log of a live slot: upserts and deletes on top of its snapshot.

Layout: ``slots_dir/<slot-name>.log/`` (beside the immutable slot directory, never inside it)::

    LOCK                        flock-ed by the one writer process
    00000000000000000001.wal    segments, named by the sequence number of their first record
    00000000000000052117.wal    a new segment starts once the current one passes SEGMENT_BYTES

A segment is ``MAGIC`` followed by frames (``ebr.index.live.frames``: length, crc32, then a
payload of kind, lsn, count, dim and the upserted rows or deleted job ids).

One frame is one acknowledged batch: it is written with ``os.write`` and made durable with one
``os.fsync`` before the append returns (group commit), so a batch is all-or-nothing. Sequence
numbers (lsn) start at 1 and are consecutive.

A crash can only tear the frame being appended, the last one: a cut header, or a header that
claims bytes up to or past the end of the file. Replay drops such a torn tail (the writer
truncates it: it was never acknowledged). Any other bad bytes are damage, and a damaged frame's
write is lost with its bytes; replay then resynchronises on the next frame whose header, lsn
and crc check (a false match needs a crc32 collision inside the expected lsn range), applies
every intact frame after the damage, and reports each damaged byte range and the lsns lost in
``ReplayInfo.problems`` (logged as errors). A writer never truncates damage: it appends after
it, so the damage stays reported until a compaction folds the log away.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from ebr.index.live.frames import (  # the frame format, re-exported for the log's users
    _FRAME,
    DELETE,
    MAX_PAYLOAD,
    MIN_FRAME,
    UPSERT,
    Record,
    decode,
    encode,
    frame_at,
    next_frame,
    torn_at,
)
from ebr.io import _fsync_dir

__all__ = [
    "DELETE", "MAGIC", "MAX_PAYLOAD", "SEGMENT_BYTES", "UPSERT", "_FRAME", "LogWriter", "Record",
    "ReplayInfo", "encode", "log_dir_for", "replay",
]  # fmt: skip
MAGIC = b"EBRWAL1\n"
MARK_BYTES = 32  # see ReplayInfo.mark
SEGMENT_BYTES = 64 << 20  # rotation keeps any one file small enough to read whole on replay
log = logging.getLogger(__name__)


def log_dir_for(slot_path: Path) -> Path:
    """``slots_dir/<slot-name>.log``: outside the slot, whose files are checksummed and frozen."""
    slot_path = Path(slot_path)
    return slot_path.parent / f"{slot_path.name}.log"


@dataclass(frozen=True)
class ReplayInfo:
    """Where a replay ended: what a writer needs to continue the log, and what was wrong."""

    last_lsn: int  # 0 for an empty log
    records: int  # records read (decoded or skipped)
    segment: Path | None  # the last segment, None when there is none
    end: int  # byte offset in ``segment`` where appends go: after the last frame or damage
    torn_bytes: int  # bytes after ``end``: a torn tail (one interrupted, unacknowledged write)
    problems: tuple[str, ...] = ()  # damage and lost lsns, one line each; () for a sound log
    mark: bytes = b""  # the last MARK_BYTES before ``end``: a replay ``since`` this one checks
    # that they are still there (the segment was not rewritten) before reading on from ``end``


def _lsns(first: int, last: int) -> str:
    n = last - first + 1
    return f"{n} acknowledged record{'s' * (n != 1)} lost (lsn {first}" + (
        f"-{last})" if n > 1 else ")"
    )


def _resumed(damaged: list[str], lsn: int, rec_lsn: int, where: str) -> str:
    """The problem line for the damage (or lsn gap) that ends at the intact frame ``where``."""
    if not damaged:
        return f"{where}: the log jumps from lsn {lsn} to {rec_lsn}: " + _lsns(lsn + 1, rec_lsn - 1)
    lost = (
        _lsns(lsn + 1, rec_lsn - 1)
        if rec_lsn > lsn + 1
        else "no lsn missing around them (inserted bytes, or a lost last write whose lsn a "
        "writer reused)"
    )
    return f"{', '.join(damaged)} damaged and skipped: {lost}; replay resumed at lsn {rec_lsn}"


def replay(
    log_dir: Path,
    apply: Callable[[Record], None],
    after_lsn: int = 0,
    quiet: Collection[str] = (),
    since: ReplayInfo | None = None,
) -> ReplayInfo:
    """Read every intact frame in order and pass records with lsn > ``after_lsn`` to ``apply``.

    Records at or before ``after_lsn`` are checked (crc, sequence) but not decoded. Damage (see
    the module docstring) never stops the replay: it is skipped, every intact frame after it is
    applied, and it is logged as an error (unless the line is in ``quiet``: already reported)
    and listed in ``problems``. A torn tail at the end of the last segment is not a problem.

    ``since`` (what an earlier replay of this log returned) reads only the bytes appended after
    it: a reader tailing a writer pays for the new frames, not for the whole log again (which
    also kept every read's bytes alive behind the tables decoded from them). It is ignored, and
    the whole log read, when that replay found damage or its segment no longer holds its end.

    Raises:
        ValueError: an intact frame of a kind this version does not know.
    """
    segments = sorted(Path(log_dir).glob("*.wal"))
    lsn, count, end, torn, offset, mark = 0, 0, 0, 0, 0, b""
    resumed = None if since is None else _resume(since, segments)
    if since is not None and resumed is not None:
        segments = segments[segments.index(since.segment) :]  # type: ignore[arg-type]
        lsn, count, offset = since.last_lsn, since.records, since.end
    problems: list[str] = []
    damaged: list[str] = []  # byte ranges skipped since the last intact frame
    skipped = 0  # their size: each may have held up to skipped // MIN_FRAME frames
    for i, seg in enumerate(segments):
        last, name = i == len(segments) - 1, f"{seg.parent.name}/{seg.name}"
        base = offset if i == 0 else 0  # positions below are relative to the bytes read
        data = resumed if i == 0 and resumed is not None else _read(seg, 0)
        prior = since.mark if base and since is not None else b""  # the bytes before ``data``
        pos = 0 if base or data[: len(MAGIC)] != MAGIC else len(MAGIC)  # bad magic: damage
        if not base and not pos and last and MAGIC.startswith(data):  # crashed while creating
            end, torn = 0, len(data)
            break
        first = int(seg.stem) if seg.stem.isdigit() else 0
        if not data and not base:
            damaged.append(f"{name} (empty)")
        while pos < len(data):
            frame = frame_at(data, pos) if pos or base else None
            if frame is None:
                limit = max(lsn, first - 1) + (skipped + len(data)) // MIN_FRAME + 1
                found = next_frame(data, pos + 1, lsn, limit)
                if found is None and last and (pos or base) and torn_at(data, pos):
                    break  # a torn tail: the append a crash interrupted, never acknowledged
                stop = len(data) if found is None else found
                damaged.append(f"{name} bytes {base + pos}-{base + stop} ({stop - pos} bytes)")
                skipped, pos = skipped + stop - pos, stop
                continue
            rec_lsn, stop = frame
            if rec_lsn <= lsn:  # intact but out of order: applying it would undo later writes
                at = f"{name} byte {base + pos}"
                problems.append(f"{at}: lsn {rec_lsn} after lsn {lsn}, skipped")
                pos = stop
                continue
            if not base and pos == len(MAGIC) and rec_lsn != first:
                problems.append(f"{name}: named for lsn {seg.stem} but starts with lsn {rec_lsn}")
            if damaged or rec_lsn != lsn + 1:
                problems.append(_resumed(damaged, lsn, rec_lsn, f"{name} byte {base + pos}"))
                damaged, skipped = [], 0
            if rec_lsn > after_lsn:
                # Its own bytes: a table decoded from a view of ``data`` kept the whole read
                # alive as long as the table lived (a live slot keeps its tables).
                payload = memoryview(bytes(memoryview(data)[pos + _FRAME.size : stop]))
                apply(decode(payload, f"{seg} byte {base + pos}"))
            lsn, count, pos = rec_lsn, count + 1, stop
        end, torn, mark = base + pos, len(data) - pos, (prior + data[:pos])[-MARK_BYTES:]
    if damaged:
        problems.append(
            f"{', '.join(damaged)} damaged at the end of the log: the acknowledged records "
            f"after lsn {lsn} they held are lost"
        )
    for line in problems:
        if line not in quiet:
            log.error("log %s: %s", log_dir, line)
    tail_segment = segments[-1] if segments else None
    return ReplayInfo(lsn, count, tail_segment, end, torn, tuple(problems), mark if end else b"")


def _resume(since: ReplayInfo, segments: list[Path]) -> bytes | None:
    """The bytes of ``since``'s segment after its end, when a replay can go on from there: it
    found no damage (a full replay words damage by what follows it), and its segment is still
    there with the bytes it ended on (not rewritten). None when it cannot."""
    if since.problems or since.segment is None or since.segment not in segments or not since.end:
        return None
    try:
        data = _read(since.segment, since.end - len(since.mark))
    except FileNotFoundError:
        return None
    if data[: len(since.mark)] != since.mark:
        return None
    return data[len(since.mark) :]


def _read(segment: Path, offset: int) -> bytes:
    """The bytes of ``segment`` from ``offset`` on."""
    with open(segment, "rb") as f:
        f.seek(offset)
        return f.read()


def _write_all(fd: int, data: bytes, offset: int) -> None:
    # pwrite at an explicit offset: after a failed, rolled-back append the fd's own position
    # would point past the truncated end and leave a hole of zeros.
    view = memoryview(data)
    while view:  # a write may be shorter than asked (signals, big buffers)
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


class LogWriter:
    """The single appender of one log. Holds an exclusive flock on ``LOCK`` until ``close``.

    Lock first, then ``replay``, then ``resume``: replaying before holding the lock could miss
    records another writer appends in between.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        if not self.log_dir.exists():
            self.log_dir.mkdir(parents=True)
            _fsync_dir(self.log_dir.parent)  # the log dir itself must survive a crash
        self._lock = os.open(self.log_dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise RuntimeError(f"log {self.log_dir} is already open for writing") from None
        self.next_lsn = 0  # set by resume
        self.failed: str | None = None  # set when the file state is unknown: refuse appends
        self._fd = -1
        self._size = 0

    def resume(self, info: ReplayInfo) -> None:
        """Continue the log ``replay`` described, truncating its torn tail first (only that:
        damage stays where it is and appends go after it, so replay keeps reporting it)."""
        self.next_lsn = info.last_lsn + 1
        if info.segment is None:
            self._open_segment()
            return
        self._fd = os.open(info.segment, os.O_WRONLY)
        self._size = info.end
        if info.torn_bytes:
            log.warning(
                "log %s: truncating a torn tail of %d bytes at byte %d of %s (an append a crash"
                " interrupted, never acknowledged)",
                self.log_dir, info.torn_bytes, info.end, info.segment.name,
            )  # fmt: skip
            os.ftruncate(self._fd, info.end)
            if info.end == 0:
                _write_all(self._fd, MAGIC, 0)
                self._size = len(MAGIC)
            os.fsync(self._fd)

    def _open_segment(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        path = self.log_dir / f"{self.next_lsn:020d}.wal"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        _write_all(self._fd, MAGIC, 0)
        os.fsync(self._fd)
        _fsync_dir(self.log_dir)  # a segment whose directory entry is lost loses its records
        self._size = len(MAGIC)

    def append(self, rec: Record) -> None:
        """Write ``rec`` (its lsn must be ``next_lsn``) and fsync: durable when this returns."""
        if self._fd < 0:
            raise RuntimeError(f"log {self.log_dir} is closed or was never resumed")
        if self.failed:
            raise OSError(f"log {self.log_dir} refuses appends after an I/O failure: {self.failed}")
        if rec.lsn != self.next_lsn:
            raise ValueError(f"record lsn {rec.lsn} != next lsn {self.next_lsn}")
        frame = encode(rec)
        if self._size >= SEGMENT_BYTES and self._size > len(MAGIC):  # never leave one empty
            self._open_segment()
        try:
            _write_all(self._fd, frame, self._size)
            os.fsync(self._fd)
        except BaseException as exc:
            # Cut the partial frame off so the next append does not land behind garbage; after
            # a failed fsync the page cache is unreliable, so only a clean truncate may go on.
            try:
                os.ftruncate(self._fd, self._size)
                os.fsync(self._fd)
            except OSError as again:
                self.failed = f"{exc!r}, then {again!r} while undoing it"
            raise
        self._size += len(frame)
        self.next_lsn += 1

    def close(self) -> None:
        for fd in (self._fd, self._lock):
            if fd >= 0:
                os.close(fd)  # closing the LOCK fd releases the flock
        self._fd = self._lock = -1
