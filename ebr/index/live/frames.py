"""One frame of a live slot's log (``ebr.index.live.wal``): its bytes, and finding it again.

A frame is ``<u32 payload length><u32 crc32 of the payload>`` then the payload
``<u8 kind><u64 lsn><u32 count m><u32 dim d>`` and:

- upsert (kind 1): float32 vectors [m, d] (little-endian), then one Arrow IPC stream holding
  the m rows (``job_id`` + the slot's item columns, in the slot's schema);
- delete (kind 2): int64 job ids [m].

Frames carry no marker of their own: after damage, replay finds the next intact frame by its
header (a known kind, an lsn in the range the damage can have skipped, a length that fits) and
its crc (``next_frame``). Logs of every version read the same way.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

UPSERT, DELETE = 1, 2
MAX_PAYLOAD = 1 << 30  # one frame per batch; a bigger batch should be split by the caller
_FRAME = struct.Struct("<II")  # payload length, crc32(payload)
_HEAD = struct.Struct("<BQII")  # kind, lsn, count, dim
MIN_FRAME = _FRAME.size + _HEAD.size  # no frame is shorter: n bytes hold at most n // 25


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


def decode(payload: memoryview, where: str) -> Record:
    """The record in a checked frame's ``payload``; ``where`` (file, byte) names it in errors."""
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


def frame_at(data: bytes, pos: int) -> tuple[int, int] | None:
    """(lsn, end) of the frame at ``pos`` when its length fits and its crc checks, else None."""
    if len(data) - pos < _FRAME.size:
        return None
    length, crc = _FRAME.unpack_from(data, pos)
    stop = pos + _FRAME.size + length
    if length < _HEAD.size or stop > len(data):
        return None
    if zlib.crc32(memoryview(data)[pos + _FRAME.size : stop]) != crc:
        return None
    return int(_HEAD.unpack_from(data, pos + _FRAME.size)[1]), stop


def next_frame(data: bytes, start: int, after: int, limit: int) -> int | None:
    """The first offset >= ``start`` of a frame whose lsn is in (``after``, ``limit``] and whose
    header and crc check: where replay resumes after damage. None when there is none.

    Vectorised prefilter (kind byte, lsn range, length that fits), then the crc, in order."""
    arr, last = np.frombuffer(data, np.uint8), len(data) - MIN_FRAME  # last possible start
    lsn_at, len_at = np.arange(9, 17), np.arange(4)  # header offsets of the lsn and length
    lo, step = start, 1 << 16  # small steps first: damage is usually one frame long
    while lo <= last:
        hi = min(lo + step, last + 1)
        kind = arr[lo + 8 : hi + 8]  # the kind byte of a frame at offset o is at o + 8
        cand = np.flatnonzero((kind == UPSERT) | (kind == DELETE)) + lo
        lsn = arr[cand[:, None] + lsn_at].view("<u8").ravel()
        cand = cand[(lsn > after) & (lsn <= min(limit, 2**63))]
        length = arr[cand[:, None] + len_at].view("<u4").ravel().astype(np.int64)
        cand = cand[(length >= _HEAD.size) & (cand + _FRAME.size + length <= len(data))]
        for pos in cand.tolist():
            if frame_at(data, pos) is not None:
                return int(pos)
        lo, step = hi, min(step * 4, 1 << 22)
    return None


def torn_at(data: bytes, pos: int) -> bool:
    """Could the bytes from ``pos`` to the end be one interrupted append? Its header is cut
    short or claims bytes up to or past the end; any other bad tail is damage."""
    if len(data) - pos < _FRAME.size:
        return True
    return pos + _FRAME.size + _FRAME.unpack_from(data, pos)[0] >= len(data)
