"""Damage in a live slot's log: replay applies every intact frame, drops only a torn tail, and
reports everything else (byte range, lsns lost); a writer never truncates intact frames.

Each damaged copy is compared with an oracle: a frame is intact when its original bytes are
still there, unchanged and whole; replay must apply exactly the intact frames, in order.

Run: ``pytest -q tests/unit/test_wal_damage.py``
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ebr.config import IndexConfig
from ebr.index.build.writer import write_slot
from ebr.index.live import wal
from ebr.index.live.slot import open_live

N_FRAMES = 40
Damage = Callable[[bytes, np.random.Generator], tuple[bytes, Callable[[int, int], bool]]]


def record(lsn: int) -> wal.Record:
    """Odd lsns delete two jobs, even lsns upsert two (vectors + an Arrow table): both kinds."""
    ids = np.array([lsn * 10, lsn * 10 + 1], np.int64)
    if lsn % 2:
        return wal.Record(wal.DELETE, lsn, ids)
    items = pa.table({"job_id": ids, "title": [f"job {lsn}", "x" * (lsn % 7)]})
    vectors = np.full((2, 4), lsn, np.float32)
    return wal.Record(wal.UPSERT, lsn, ids, vectors, items)


def write_log(log_dir: Path, lsns: range) -> None:
    writer = wal.LogWriter(log_dir)
    try:
        writer.resume(wal.replay(log_dir, lambda rec: None))
        for lsn in lsns:
            writer.append(record(lsn))
    finally:
        writer.close()


def frames_of(data: bytes) -> list[tuple[int, int, int]]:
    """(lsn, start, end) of each frame of an undamaged segment."""
    out, pos = [], len(wal.MAGIC)
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "little")
        out.append((int.from_bytes(data[pos + 9 : pos + 17], "little"), pos, pos + 8 + length))
        pos += 8 + length
    return out


def replayed(log_dir: Path) -> tuple[list[wal.Record], wal.ReplayInfo]:
    got: list[wal.Record] = []
    return got, wal.replay(log_dir, got.append)


def assert_records(got: list[wal.Record], lsns: list[int]) -> None:
    """``got`` holds exactly the records of ``lsns``, in order, with their contents."""
    assert [r.lsn for r in got] == lsns
    for rec in got:
        want = record(rec.lsn)
        assert rec.kind == want.kind
        np.testing.assert_array_equal(rec.job_ids, want.job_ids)
        if want.kind == wal.UPSERT:
            np.testing.assert_array_equal(rec.vectors, want.vectors)
            assert rec.items is not None and rec.items.equals(want.items)


def named_lsns(problems: tuple[str, ...]) -> set[int]:
    """Every lsn a problem line says was lost ("... lost (lsn 4)" / "(lsn 4-6)")."""
    out: set[int] = set()
    for a, b in re.findall(r"lost \(lsn (\d+)(?:-(\d+))?\)", " ".join(problems)):
        out.update(range(int(a), int(b or a) + 1))
    return out


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One segment of N_FRAMES frames (deletes and upserts), never modified."""
    log_dir = tmp_path_factory.mktemp("clean") / "slot.log"
    write_log(log_dir, range(1, N_FRAMES + 1))
    return log_dir


def damaged_copy(clean: Path, tmp: Path, data: bytes) -> Path:
    log_dir = tmp / "slot.log"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    (log_dir / "00000000000000000001.wal").write_bytes(data)
    return log_dir


def check_against_oracle(clean: Path, tmp: Path, new: bytes, intact: Callable[[int, int], bool]):
    """Replay ``new`` (a damaged copy of the clean segment) and hold it to the oracle:
    ``intact(start, end)`` says whether the original frame at those bytes survived."""
    frames = frames_of((clean / "00000000000000000001.wal").read_bytes())
    keep = [lsn for lsn, a, b in frames if intact(a, b)]
    lost = sorted(set(range(1, N_FRAMES + 1)) - set(keep))
    got, info = replayed(damaged_copy(clean, tmp, new))
    assert_records(got, keep)  # every intact acknowledged frame, nothing else
    if not lost:
        return info
    assert info.problems or info.torn_bytes, "damage went unreported"
    followed = [lsn for lsn in lost if lsn < max(keep, default=0)]  # an intact frame follows
    if followed:
        assert info.problems, "lost frames before intact ones must be reported, not torn"
        assert set(followed) <= named_lsns(info.problems), info.problems
    if lost != [N_FRAMES] or info.problems:  # only a lone damaged last frame may look torn
        assert info.problems
    return info


def test_a_flipped_byte_anywhere_loses_only_its_own_frame_and_is_reported(
    clean: Path, tmp_path: Path
) -> None:
    data = (clean / "00000000000000000001.wal").read_bytes()
    frames = frames_of(data)
    # Each byte of the segment's magic; a payload byte in the middle and the last byte of
    # every frame; every header byte (length, crc, kind, lsn, count, dim) of the first, two
    # middle and the last two frames (an upsert and a delete each).
    offsets = list(range(len(wal.MAGIC)))
    for k, (_, a, b) in enumerate(frames):
        offsets += [(a + b) // 2, b - 1]
        if k in (0, 1, N_FRAMES // 2, N_FRAMES // 2 + 1, N_FRAMES - 2, N_FRAMES - 1):
            offsets += list(range(a, a + 25))
    for off in offsets:
        new = bytearray(data)
        new[off] ^= 0x5A
        info = check_against_oracle(
            clean, tmp_path, bytes(new), lambda a, b, off=off: not a <= off < b
        )
        if off < len(wal.MAGIC):
            assert any("bytes 0-8" in p for p in info.problems), info.problems
        if off < frames[-1][1]:  # not the last frame: never taken for a torn tail
            assert info.torn_bytes == 0 and info.problems


@pytest.mark.parametrize("k", [1, 10, N_FRAMES - 4])
def test_a_length_pointing_past_real_frames_loses_only_its_frame(
    clean: Path, tmp_path: Path, k: int
) -> None:
    """Frame k's length rewritten to end exactly where frame k+3 ends (a frame boundary):
    replay must not jump to where the bad length says; k+1..k+3 come back."""
    data = (clean / "00000000000000000001.wal").read_bytes()
    frames = frames_of(data)
    _, a, _ = frames[k - 1]
    new = data[:a] + (frames[k + 2][2] - a - 8).to_bytes(4, "little") + data[a + 4 :]
    info = check_against_oracle(clean, tmp_path, new, lambda s, e: s != a)
    assert named_lsns(info.problems) == {k}


def _zero(data: bytes, rng: np.random.Generator):
    a = int(rng.integers(len(wal.MAGIC), len(data) - 1))
    b = int(rng.integers(a + 1, min(len(data), a + 2000) + 1))
    new = data[:a] + bytes(b - a) + data[b:]
    return new, lambda s, e: new[s:e] == data[s:e]


def _cut(data: bytes, rng: np.random.Generator):
    # Mid-log: the last frame stays whole (a file cut short is a torn tail, tested below).
    last = frames_of(data)[-1][1]
    a = int(rng.integers(len(wal.MAGIC), last))
    b = int(rng.integers(a + 1, min(last, a + 1500) + 1))
    return data[:a] + data[b:], lambda s, e: e <= a or s >= b


def _insert(data: bytes, rng: np.random.Generator):
    at = int(rng.integers(len(wal.MAGIC), frames_of(data)[-1][1] + 1))  # mid-log garbage
    junk = rng.integers(0, 256, int(rng.integers(1, 600)), dtype=np.uint8).tobytes()
    return data[:at] + junk + data[at:], lambda s, e: e <= at or s >= at


def _flips(data: bytes, rng: np.random.Generator):
    spots = rng.integers(len(wal.MAGIC), len(data), int(rng.integers(2, 6)))
    new = bytearray(data)
    for off in spots:
        new[off] ^= int(rng.integers(1, 256))
    return bytes(new), lambda s, e: not any(s <= o < e for o in spots)


@pytest.mark.parametrize("damage", [_zero, _cut, _insert, _flips], ids=lambda f: f.__name__)
def test_random_damage_keeps_every_intact_frame(
    clean: Path, tmp_path: Path, damage: Damage
) -> None:
    data = (clean / "00000000000000000001.wal").read_bytes()
    for seed in range(60):
        new, intact = damage(data, np.random.default_rng(seed))
        info = check_against_oracle(clean, tmp_path, new, intact)
        if damage is _insert:  # garbage between or inside frames, never at the end
            assert info.problems and info.torn_bytes == 0


@pytest.mark.parametrize("how", ["cut", "garbage", "huge_length", "bad_crc_last", "zeros_4"])
def test_a_torn_tail_is_dropped_without_a_problem(clean: Path, tmp_path: Path, how: str):
    data = (clean / "00000000000000000001.wal").read_bytes()
    frames = frames_of(data)
    new = {
        "cut": data[:-7],
        "garbage": data + np.random.default_rng(3).integers(0, 256, 3000, np.uint8).tobytes(),
        "huge_length": data + wal._FRAME.pack(2**31, 0) + bytes(40),
        "bad_crc_last": data[:-1] + bytes([data[-1] ^ 0xFF]),
        "zeros_4": data + bytes(4),  # a header cut short
    }[how]
    got, info = replayed(damaged_copy(clean, tmp_path, new))
    complete = N_FRAMES - 1 if how in ("cut", "bad_crc_last") else N_FRAMES
    assert_records(got, list(range(1, complete + 1)))
    assert info.problems == () and info.torn_bytes > 0
    assert info.end == (frames[complete - 1][2])


def test_a_damaged_tail_that_no_crash_explains_is_reported_and_kept(clean: Path, tmp_path: Path):
    """Zeros over the last frames: a header claiming a 0-byte frame is not an interrupted append.
    The writer appends after the damage (never truncates it) and replay keeps reporting it."""
    data = (clean / "00000000000000000001.wal").read_bytes()
    start = frames_of(data)[-3][1]
    new = data[:start] + bytes(len(data) - start)
    log_dir = damaged_copy(clean, tmp_path, new)
    got, info = replayed(log_dir)
    assert_records(got, list(range(1, N_FRAMES - 2)))
    assert info.torn_bytes == 0 and len(info.problems) == 1
    assert f"bytes {start}-{len(data)}" in info.problems[0]
    assert f"after lsn {N_FRAMES - 3}" in info.problems[0]
    write_log(log_dir, range(N_FRAMES - 2, N_FRAMES + 3))  # lsns continue after the last intact
    after = (log_dir / "00000000000000000001.wal").read_bytes()
    assert after[: len(new)] == new  # nothing truncated
    got, info = replayed(log_dir)
    assert_records(got, list(range(1, N_FRAMES - 2)) + list(range(N_FRAMES - 2, N_FRAMES + 3)))
    assert info.problems and f"bytes {start}-{len(data)}" in info.problems[0]


def test_a_writer_keeps_mid_log_damage_and_appends_after_it(clean: Path, tmp_path: Path):
    data = (clean / "00000000000000000001.wal").read_bytes()
    frames = frames_of(data)
    new = bytearray(data)
    for k in (5, 6, 20):  # two adjacent frames and one more
        new[(frames[k - 1][1] + frames[k - 1][2]) // 2] ^= 0xFF
    log_dir = damaged_copy(clean, tmp_path, bytes(new))
    write_log(log_dir, range(N_FRAMES + 1, N_FRAMES + 4))
    after = (log_dir / "00000000000000000001.wal").read_bytes()
    assert after[: len(new)] == bytes(new)
    got, info = replayed(log_dir)
    keep = [lsn for lsn in range(1, N_FRAMES + 4) if lsn not in (5, 6, 20)]
    assert_records(got, keep)
    assert len(info.problems) == 2 and named_lsns(info.problems) == {5, 6, 20}


def test_damage_in_an_earlier_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Damage at the end of a closed segment is never a torn tail; a missing segment is a gap."""
    monkeypatch.setattr(wal, "SEGMENT_BYTES", 1500)
    log_dir = tmp_path / "slot.log"
    write_log(log_dir, range(1, N_FRAMES + 1))
    segments = sorted(log_dir.glob("*.wal"))
    assert len(segments) >= 5
    firsts = [int(s.stem) for s in segments]
    # A flip in the LAST frame of the first segment, one in the middle of the third, and the
    # fourth segment removed.
    first = bytearray(segments[0].read_bytes())
    first[-1] ^= 0x01
    segments[0].write_bytes(bytes(first))
    third = bytearray(segments[2].read_bytes())
    mid = frames_of(bytes(third))[1]
    third[mid[1] + 12] ^= 0x01
    segments[2].write_bytes(bytes(third))
    segments[3].unlink()
    got, info = replayed(log_dir)
    gone = {firsts[1] - 1, mid[0], *range(firsts[3], firsts[4])}
    assert_records(got, [lsn for lsn in range(1, N_FRAMES + 1) if lsn not in gone])
    assert named_lsns(info.problems) == gone and info.torn_bytes == 0
    assert any("jumps from lsn" in p for p in info.problems)


def test_a_bad_segment_header_is_damage_not_a_fresh_segment(tmp_path: Path) -> None:
    log_dir = tmp_path / "slot.log"
    write_log(log_dir, range(1, 6))
    seg = sorted(log_dir.glob("*.wal"))[0]
    seg.write_bytes(b"XXXXXXXX" + seg.read_bytes()[8:])
    got, info = replayed(log_dir)
    assert_records(got, [1, 2, 3, 4, 5])
    assert len(info.problems) == 1 and "bytes 0-8" in info.problems[0]


# A real live slot: what stats() exposes, what a writer and a read-only replica do.


@pytest.fixture
def slot_path(tmp_path: Path) -> Path:
    n, d = 300, 8
    x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    items = pd.DataFrame({"job_id": np.arange(n, dtype=np.int64) + 1000, "title": ["t"] * n})
    cfg = IndexConfig(kind="flat")
    return write_slot(tmp_path / "slots", "s", x / np.linalg.norm(x, axis=1, keepdims=True),
                      items, "v1", cfg)  # fmt: skip


def tombstoned(live) -> set[int]:
    return {int(j) for j in live.snapshot.job_ids[live.deleted_rows()]}


def test_a_live_slot_reports_damage_and_keeps_every_intact_tombstone(slot_path: Path) -> None:
    jobs = list(range(1000, 1012))
    with open_live(slot_path) as live:
        for j in jobs:  # 12 acknowledged tombstones, one frame each
            live.delete([j])
        assert live.stats()["log_problems"] == []
    seg = sorted(wal.log_dir_for(slot_path).glob("*.wal"))[-1]
    data = bytearray(seg.read_bytes())
    fourth = frames_of(bytes(data))[3]
    data[fourth[1] + 18] ^= 0xFF
    seg.write_bytes(bytes(data))

    replica = open_live(slot_path, writable=False)
    stats = replica.stats()
    assert tombstoned(replica) == set(jobs) - {1003} and stats["lsn"] == 12
    assert len(stats["log_problems"]) == 1 and "lost (lsn 4)" in stats["log_problems"][0]
    assert stats["torn_bytes_dropped"] == 0

    with open_live(slot_path) as writer:  # must not truncate the intact frames after lsn 4
        assert writer.stats()["log_problems"] == stats["log_problems"]
        assert writer.delete([1003]) == 13  # the repair: re-apply the lost write
    assert seg.read_bytes()[: len(data)] == bytes(data)
    assert replica.refresh() == 1 and tombstoned(replica) == set(jobs)
    assert replica.stats()["log_problems"] == stats["log_problems"]  # still there: reported
    with open_live(slot_path, writable=False) as again:
        assert tombstoned(again) == set(jobs) and again.stats()["log_problems"]


def test_a_healthy_and_a_torn_log_report_no_problems(slot_path: Path) -> None:
    with open_live(slot_path) as live:
        live.delete([1000])
        live.delete([1001])
    seg = sorted(wal.log_dir_for(slot_path).glob("*.wal"))[-1]
    seg.write_bytes(seg.read_bytes()[:-5])
    with open_live(slot_path) as live:
        stats = live.stats()
        assert stats["log_problems"] == [] and stats["torn_bytes_dropped"] > 0
        assert tombstoned(live) == {1000}


def tail(log_dir: Path, since: wal.ReplayInfo) -> tuple[list[wal.Record], wal.ReplayInfo]:
    got: list[wal.Record] = []
    return got, wal.replay(log_dir, got.append, since.last_lsn, since.problems, since=since)


def test_a_tailing_replay_reads_only_the_new_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader following a writer (``since``) gets what a full replay gets, across segment
    rotations and appends it catches half-written, reading only the bytes appended since."""
    monkeypatch.setattr(wal, "SEGMENT_BYTES", 1500)
    log_dir = tmp_path / "slot.log"
    write_log(log_dir, range(1, 6))
    seen, info = replayed(log_dir)
    read: list[int] = []
    real_read = wal._read
    monkeypatch.setattr(wal, "_read", lambda seg, off: read.append(off) or real_read(seg, off))
    lsn = 5
    for step in range(12):
        before = sum(p.stat().st_size for p in log_dir.glob("*.wal"))
        write_log(log_dir, range(lsn + 1, lsn + 4))
        lsn += 3
        segment = sorted(log_dir.glob("*.wal"))[-1]
        whole = segment.read_bytes()
        if step % 3 == 0 and len(frames_of(whole)) > 1:  # the reader catches the last append
            cut = frames_of(whole)[-1][1] + 11  # half-written
            segment.write_bytes(whole[:cut])
            got, half = tail(log_dir, info)
            assert half.problems == () and half.torn_bytes == 11 and half.last_lsn == lsn - 1
            seen += got
            info = half
            segment.write_bytes(whole)  # the append completes
        read.clear()
        got, info = tail(log_dir, info)
        seen += got
        after = sum(p.stat().st_size for p in log_dir.glob("*.wal"))
        fresh = sum(
            p.stat().st_size - off
            for p, off in zip(sorted(log_dir.glob("*.wal"))[-len(read) :], read, strict=True)
        )
        assert fresh <= after - before + (len(wal.MAGIC) + wal.MARK_BYTES) * len(read), (
            "read more than the tail"
        )
        assert info.last_lsn == lsn and info.problems == () and info.torn_bytes == 0
    assert len(sorted(log_dir.glob("*.wal"))) >= 4
    assert_records(seen, list(range(1, lsn + 1)))
    full, whole_info = replayed(log_dir)
    assert_records(full, list(range(1, lsn + 1)))
    assert (info.segment, info.end, info.records) == (
        whole_info.segment,
        whole_info.end,
        whole_info.records,
    )


@pytest.mark.parametrize("how", ["flip", "garbage", "shrunk"])
def test_damage_after_a_tailing_replay_is_reported_as_a_full_replay_does(
    clean: Path, tmp_path: Path, how: str
) -> None:
    log_dir = damaged_copy(clean, tmp_path, (clean / "00000000000000000001.wal").read_bytes())
    _, info = replayed(log_dir)
    write_log(log_dir, range(N_FRAMES + 1, N_FRAMES + 6))
    segment = log_dir / "00000000000000000001.wal"
    data = bytearray(segment.read_bytes())
    frames = frames_of(bytes(data))
    if how == "flip":  # a frame appended after the reader's position
        data[(frames[N_FRAMES + 1][1] + frames[N_FRAMES + 1][2]) // 2] ^= 0xFF
    elif how == "garbage":  # bytes that are no frame between two appends
        data[frames[N_FRAMES][1] : frames[N_FRAMES][1]] = bytes(range(200))
    else:  # the segment rewritten shorter than where the reader stopped: read it all again
        del data[frames[3][1] : frames[4][1]]
    segment.write_bytes(bytes(data))
    got, tailed = tail(log_dir, info)
    full, whole = replayed(log_dir)
    assert tailed.problems == whole.problems and tailed.problems
    assert [r.lsn for r in got] == [r.lsn for r in full if r.lsn > N_FRAMES]
    assert (tailed.last_lsn, tailed.end) == (whole.last_lsn, whole.end)


def test_a_replica_finds_damage_to_frames_it_applied_and_its_repair(
    slot_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only replica tails the log, and reads it whole every LOG_VERIFY_S: damage to a
    frame it applied long ago (a disk fault) shows in its stats, and clears once repaired."""
    from ebr.index.live import slot as slot_module

    with open_live(slot_path) as live:
        for j in range(1000, 1006):
            live.delete([j])
    replica = open_live(slot_path, writable=False)
    seg = sorted(wal.log_dir_for(slot_path).glob("*.wal"))[-1]
    data = seg.read_bytes()
    second = frames_of(data)[1]
    damaged = bytearray(data)
    damaged[second[1] + 18] ^= 0xFF
    seg.write_bytes(bytes(damaged))
    monkeypatch.setattr(slot_module, "LOG_VERIFY_S", 3600.0)
    assert replica.refresh() == 0 and replica.stats()["log_problems"] == []  # tailing only
    monkeypatch.setattr(slot_module, "LOG_VERIFY_S", 0.0)
    assert replica.refresh() == 0
    problems = replica.stats()["log_problems"]
    assert len(problems) == 1 and "lost (lsn 2)" in problems[0]
    assert tombstoned(replica) == set(range(1000, 1006))  # what it applied stays applied
    seg.write_bytes(data)  # repaired
    replica.refresh()
    assert replica.stats()["log_problems"] == []
