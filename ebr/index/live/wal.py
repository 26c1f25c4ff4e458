"""The durable, append-only log of a live slot: upserts and deletes on top of its snapshot.

Layout: ``slots_dir/<slot-name>.log/`` (beside the immutable slot directory, never inside it)::

    LOCK                        flock-ed by the one writer process
    00000000000000000001.wal    segments, named by the sequence number of their first record
    00000000000000052117.wal    a new segment starts once the current one passes SEGMENT_BYTES

A segment is ``MAGIC`` followed by frames. A frame is ``<u32 payload length><u32 crc32 of the
payload>`` then the payload ``<u8 kind><u64 lsn><u32 count m><u32 dim d>`` and:

- upsert (kind 1): float32 vectors [m, d] (little-endian), then one Arrow IPC stream holding
  the m rows (``job_id`` + the slot's item columns, in the slot's schema);
- delete (kind 2): int64 job ids [m].

One frame is one acknowledged batch: it is written with ``os.write`` and made durable with one
``os.fsync`` before the append returns (group commit), so a batch is all-or-nothing. Sequence
numbers (lsn) start at 1 and are consecutive; a gap or a repeat is corruption. A crash mid-write
leaves a torn frame at the end of the last segment: its length or crc does not check, and replay
stops there (the writer truncates it). A bad frame anywhere else is real corruption and raises.
"""

from __future__ import annotations

import fcntl
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ebr.io import _fsync_dir

MAGIC = b"EBRWAL1\n"
UPSERT, DELETE = 1, 2
SEGMENT_BYTES = 64 << 20  # rotation keeps any one file small enough to read whole on replay
MAX_PAYLOAD = 1 << 30  # one frame per batch; a bigger batch should be split by the caller
_FRAME = struct.Struct("<II")  # payload length, crc32(payload)
_HEAD = struct.Struct("<BQII")  # kind, lsn, count, dim


def log_dir_for(slot_path: Path) -> Path:
    """``slots_dir/<slot-name>.log``: outside the slot, whose files are checksummed and frozen."""
    slot_path = Path(slot_path)
    return slot_path.parent / f"{slot_path.name}.log"


@dataclass(frozen=True)
class Record:
    """One logged batch. Upserts carry vectors and items; deletes only job ids."""

    kind: int  # UPSERT or DELETE
    lsn: int  # log sequence number, 1, 2, ...
    job_ids: np.ndarray  # [m] int64
    vectors: np.ndarray | None = None  # [m, d] float32, row i belongs to job_ids[i]
    items: pa.Table | None = None  # m rows: job_id + the slot's item columns


def encode(rec: Record) -> bytes:
    """The frame (header + payload) for ``rec``."""
    if rec.kind == UPSERT:
        if rec.vectors is None or rec.items is None:
            raise ValueError("an upsert record needs vectors and items")
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, rec.items.schema) as writer:
            writer.write_table(rec.items)
        dim = rec.vectors.shape[1]
        body = rec.vectors.astype("<f4", copy=False).tobytes() + sink.getvalue().to_pybytes()
    elif rec.kind == DELETE:
        dim, body = 0, rec.job_ids.astype("<i8", copy=False).tobytes()
    else:
        raise ValueError(f"unknown record kind {rec.kind}")
    payload = _HEAD.pack(rec.kind, rec.lsn, len(rec.job_ids), dim) + body
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"batch of {len(payload)} bytes exceeds {MAX_PAYLOAD}; split it")
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def _decode(payload: memoryview, where: str) -> Record:
    kind, lsn, m, dim = _HEAD.unpack_from(payload)
    off = _HEAD.size
    if kind == DELETE:
        return Record(DELETE, lsn, np.frombuffer(payload, "<i8", m, off).astype(np.int64))
    if kind != UPSERT:
        # The crc matched, so this is a kind a newer writer knows and we do not.
        raise ValueError(f"{where}: unknown record kind {kind} (written by a newer version?)")
    vectors = np.frombuffer(payload, "<f4", m * dim, off).reshape(m, dim).astype(np.float32)
    items = pa.ipc.open_stream(payload[off + 4 * m * dim :]).read_all()
    job_ids = items.column("job_id").to_numpy().astype(np.int64)
    return Record(UPSERT, lsn, job_ids, vectors, items)


@dataclass(frozen=True)
class ReplayInfo:
    """Where a replay ended: what a writer needs to continue the log."""

    last_lsn: int  # 0 for an empty log
    records: int  # records read (decoded or skipped)
    segment: Path | None  # the last segment, None when there is none
    end: int  # byte offset in ``segment`` after the last good frame
    torn_bytes: int  # bytes after ``end`` that were not a complete, checked frame


def replay(log_dir: Path, apply: Callable[[Record], None], after_lsn: int = 0) -> ReplayInfo:
    """Read every complete frame in order and pass records with lsn > ``after_lsn`` to ``apply``.

    Records at or before ``after_lsn`` are checked (crc, sequence) but not decoded.

    Raises:
        ValueError: corruption that a crash cannot explain (a bad frame before the last one, a
            sequence gap, a segment that is not a log segment).
    """
    segments = sorted(Path(log_dir).glob("*.wal"))
    lsn, count, end, torn = 0, 0, 0, 0
    for i, seg in enumerate(segments):
        data = seg.read_bytes()
        view, last = memoryview(data), i == len(segments) - 1
        if data[: len(MAGIC)] != MAGIC:
            if last and MAGIC.startswith(data):  # crashed while creating the segment
                end, torn = 0, len(data)
                break
            raise ValueError(f"{seg} is not a log segment (bad magic)")
        pos = len(MAGIC)
        while pos < len(data):
            length, crc = _FRAME.unpack_from(data, pos) if len(data) - pos >= 8 else (-1, 0)
            stop = pos + _FRAME.size + length
            payload = view[stop - length : stop]
            if length < _HEAD.size or stop > len(data) or zlib.crc32(payload) != crc:
                if not last:
                    raise ValueError(f"{seg}: corrupt frame at byte {pos} in a closed segment")
                break  # torn tail: a write the crash interrupted, never acknowledged
            rec_lsn = _HEAD.unpack_from(payload)[1]
            if pos == len(MAGIC) and rec_lsn != int(seg.stem):
                raise ValueError(f"{seg}: first record has lsn {rec_lsn}, name says {seg.stem}")
            if rec_lsn != lsn + 1:
                raise ValueError(f"{seg}: lsn {rec_lsn} at byte {pos} follows lsn {lsn}")
            if rec_lsn > after_lsn:
                apply(_decode(payload, f"{seg} byte {pos}"))
            lsn, count, pos = rec_lsn, count + 1, stop
        end, torn = pos, len(data) - pos
    return ReplayInfo(lsn, count, segments[-1] if segments else None, end, torn)


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
        """Continue the log ``replay`` described, truncating its torn tail first."""
        self.next_lsn = info.last_lsn + 1
        if info.segment is None:
            self._open_segment()
            return
        self._fd = os.open(info.segment, os.O_WRONLY)
        self._size = info.end
        if info.torn_bytes:
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
