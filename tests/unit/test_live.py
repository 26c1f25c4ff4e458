"""Live slots: deletes and upserts over a snapshot, replay after restart or a crash, torn log
tails, concurrent appends and searches, and compaction that keeps recall.

Run: ``pytest -q tests/unit/test_live.py``
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import shutil
import signal
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ebr.config import IndexConfig
from ebr.index.build.faiss_index import recall_queries
from ebr.index.build.writer import write_slot
from ebr.index.live import handover as handover_module
from ebr.index.live import wal
from ebr.index.live.handover import fold_into_slot
from ebr.index.live.slot import LiveSlot, merge_tables, open_live
from ebr.index.query import delta
from ebr.index.query.slot import load_slot
from ebr.metrics import exact_topk

N, D, K = 20_000, 32, 10
# Recall ~0.93 on this data: two builds over reordered rows differ by < 0.005, well inside 0.01.
IVF = IndexConfig(kind="ivf", nlist=256, nprobe=64)


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_items(n: int) -> pd.DataFrame:
    # Job ids differ from row numbers so a row/id mix-up shows.
    return pd.DataFrame(
        {
            "job_id": np.arange(n, dtype=np.int64) * 3 + 100,
            "title": [f"title {i}" for i in range(n)],
            "remote": np.arange(n) % 2 == 0,
            "posted_at": pd.Timestamp("2026-01-01") + pd.to_timedelta(np.arange(n), "min"),
        }
    )


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return unit_rows(N, D, seed=0)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, vectors: np.ndarray) -> dict[str, Path]:
    """One IVF slot (realistic ANN) and one small flat slot (exact answers to compare with)."""
    root = tmp_path_factory.mktemp("built")
    return {
        "ivf": write_slot(root, "ivf", vectors, make_items(N), "v1", IVF),
        "flat": write_slot(
            root, "flat", vectors[:3000], make_items(3000), "v1", IndexConfig(kind="flat")
        ),
    }


@pytest.fixture
def slot_path(tmp_path: Path, built: dict[str, Path], request: pytest.FixtureRequest) -> Path:
    """A private copy of a built slot (each test writes its own log)."""
    src = built[getattr(request, "param", "ivf")]
    return Path(shutil.copytree(src, tmp_path / "slots" / src.name))


def state(live: LiveSlot, queries: np.ndarray) -> tuple:
    ids, vecs, items = live.delta()
    return live.deleted_rows().copy(), ids, vecs, items, live.search(queries, K)


def assert_same_state(a: tuple, b: tuple) -> None:
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])
    pd.testing.assert_frame_equal(a[3], b[3])
    np.testing.assert_array_equal(a[4][1], b[4][1])


def test_deleted_ids_never_come_back_also_after_restart(slot_path: Path, vectors: np.ndarray):
    job_ids = make_items(N)["job_id"].to_numpy()
    rows = np.random.default_rng(1).choice(N, N // 10, replace=False)
    with open_live(slot_path) as live:
        live.delete(job_ids[rows[:1000]])
        live.delete(job_ids[rows[1000:]].tolist())
        # The deleted vectors themselves are the hardest queries: each is its own top hit.
        _, found = live.search(vectors[rows[:500]], K)
        assert not np.isin(found, job_ids[rows]).any() and (found >= 0).all()
    with open_live(slot_path) as again:
        _, found = again.search(vectors[rows[:500]], K)
        assert not np.isin(found, job_ids[rows]).any() and (found >= 0).all()
        assert again.stats()["deleted_rows"] == N // 10 and again.stats()["replayed_records"] == 2


@pytest.mark.parametrize("slot_path", ["flat"], indirect=True)
def test_deleting_a_whole_neighbourhood_still_returns_the_exact_next_k(slot_path: Path):
    live = open_live(slot_path)
    snap = live.snapshot
    query = snap.vectors[7:8]
    _, near = exact_topk(np.asarray(snap.vectors), query, 400)
    live.delete(snap.job_ids[near[0, :300]])  # far more than any first over-fetch asks for
    _, found = live.search(query, K)
    np.testing.assert_array_equal(found[0], snap.job_ids[near[0, 300 : 300 + K]])


def test_upsert_replaces_the_vector_and_the_row(slot_path: Path, vectors: np.ndarray):
    items = make_items(N)
    row, new_vec = 42, unit_rows(2, D, seed=7)
    job = int(items["job_id"][row])
    with open_live(slot_path) as live:
        lsn = live.upsert(items.iloc[[row]].assign(title="first edit"), new_vec[:1])
        assert live.upsert(items.iloc[[row]].assign(title="second edit"), new_vec[1:]) == lsn + 1
        scores, found = live.search(np.vstack([new_vec[1:], vectors[row : row + 1]]), K)
        assert found[0, 0] == job and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
        assert job not in found[1]  # the old vector no longer finds the job
        assert (np.unique(found[0], return_counts=True)[1] == 1).all()  # listed once
        _, found_first = live.search(new_vec[:1], K)
        assert job not in found_first[0]  # the superseded upsert is gone too
        ids, vecs, delta_items = live.delta()
        assert ids.tolist() == [job] and delta_items["title"].tolist() == ["second edit"]
        np.testing.assert_array_equal(vecs, new_vec[1:])
        assert delta_items.dtypes.equals(items.dtypes)
        assert live.stats()["live_items"] == N


def test_restart_replays_everything_acknowledged(slot_path: Path, vectors: np.ndarray):
    items, rng = make_items(N), np.random.default_rng(3)
    queries = recall_queries(vectors, 200, seed=4, noise=0.1)
    with open_live(slot_path) as live:
        for i in range(20):
            rows = rng.choice(N, 50, replace=False)
            live.upsert(items.iloc[rows].assign(title=f"v{i}"), unit_rows(50, D, seed=100 + i))
            live.delete(items["job_id"].to_numpy()[rng.choice(N, 30, replace=False)])
        new = pd.DataFrame({"job_id": [10**9], "title": ["brand new"], "remote": [True]})
        live.upsert(new.assign(posted_at=pd.Timestamp("2026-02-01")), unit_rows(1, D, seed=5))
        before, lsn = state(live, queries), live.stats()["lsn"]
    with open_live(slot_path) as again:
        assert again.stats()["lsn"] == lsn == 41
        assert_same_state(state(again, queries), before)


def _torn(path: Path, how: str) -> None:
    """Damage the end of the newest segment the way a crash (or a bad disk) would."""
    seg = sorted(path.glob("*.wal"))[-1]
    data = seg.read_bytes()
    if how == "truncate":
        seg.write_bytes(data[:-7])  # cut into the last frame
    elif how == "garbage":
        seg.write_bytes(data + os.urandom(100))
    elif how == "huge_length":
        seg.write_bytes(data + wal._FRAME.pack(2**31, 0) + b"\0" * 40)
    elif how == "bad_crc":
        seg.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # flip a byte of the last frame


@pytest.mark.parametrize("how", ["truncate", "garbage", "huge_length", "bad_crc"])
def test_torn_tail_is_dropped_and_complete_records_kept(slot_path: Path, how: str):
    items, queries = make_items(N), unit_rows(20, D, seed=9)
    with open_live(slot_path) as live:
        live.upsert(items.iloc[:5], unit_rows(5, D, seed=10))
        live.delete(items["job_id"][10:20].to_numpy())
        after_two = state(live, queries)
        live.upsert(items.iloc[30:33], unit_rows(3, D, seed=11))
        after_three = state(live, queries)
    _torn(slot_path.parent / "ivf.log", how)
    complete = 3 if how in ("garbage", "huge_length") else 2
    with open_live(slot_path) as again:
        stats = again.stats()
        assert stats["lsn"] == complete and stats["torn_bytes_dropped"] > 0
        assert_same_state(state(again, queries), after_three if complete == 3 else after_two)
        assert again.delete([items["job_id"][0]]) == complete + 1  # the log goes on cleanly
    with open_live(slot_path) as third:
        assert third.stats()["lsn"] == complete + 1 and third.stats()["torn_bytes_dropped"] == 0


def test_corruption_in_a_closed_segment_is_skipped_and_reported(
    slot_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wal, "SEGMENT_BYTES", 1)  # every record gets its own segment
    with open_live(slot_path) as live:
        for i in range(3):
            live.delete([100 + 3 * i])
    segments = sorted((slot_path.parent / "ivf.log").glob("*.wal"))
    assert [int(s.stem) for s in segments] == [1, 2, 3]
    with open_live(slot_path) as again:
        assert again.stats()["deleted_rows"] == 3
    data = bytearray(segments[0].read_bytes())
    data[-1] ^= 0xFF
    segments[0].write_bytes(bytes(data))
    with open_live(slot_path) as damaged:  # never a torn tail: lsn 1 lost, 2 and 3 kept
        assert damaged.stats()["deleted_rows"] == 2 and damaged.stats()["lsn"] == 3
        assert "lost (lsn 1)" in " ".join(damaged.stats()["log_problems"])


def _append_until_killed(slot_path: str, acked: multiprocessing.queues.Queue) -> None:
    with open_live(Path(slot_path)) as live:
        for i in range(10_000):
            live.delete([100 + 3 * i])
            acked.put(i)  # only after the append returned: it is acknowledged


def test_sigkill_mid_append_loses_nothing_acknowledged(slot_path: Path):
    ctx = multiprocessing.get_context("spawn")
    acked = ctx.Queue()
    child = ctx.Process(target=_append_until_killed, args=(str(slot_path), acked))
    child.start()
    try:
        last = -1
        while last < 50:
            last = acked.get(timeout=60)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.join(30)
    while not acked.empty():
        last = acked.get()
    with open_live(slot_path) as live:  # the dead writer's lock died with it
        assert live.stats()["lsn"] >= last + 1
        assert live.deleted_rows()[: last + 1].all()


def test_inputs_are_validated(slot_path: Path):
    items, vec = make_items(N), unit_rows(2, D, seed=1)
    with open_live(slot_path) as live:
        cases = [
            (items.iloc[:2], unit_rows(2, D + 1, seed=1), "dim mismatch"),
            (items.iloc[:2], np.where(np.eye(2, D) > 0, np.nan, vec).astype("f4"), "NaN"),
            (items.iloc[:2].assign(salary=1), vec, r"unknown columns \['salary'\]"),
            (items.iloc[:2].drop(columns="title"), vec, r"missing columns \['title'\]"),
            (items.iloc[[1, 1]], vec, "repeats"),
            (items.iloc[:2].assign(job_id=[0, 5]), vec, ">= 1"),
            (items.iloc[:2].assign(remote=["x", None]), vec, "remote"),
        ]
        for records, vectors, message in cases:
            with pytest.raises(ValueError, match=message):
                live.upsert(records, vectors)
        with pytest.raises(ValueError, match="1-D integer"):
            live.delete(np.array([1.5]))
        assert live.stats()["lsn"] == 0  # nothing invalid reached the log
        with pytest.raises(RuntimeError, match="already open for writing"):
            open_live(slot_path)
        reader = open_live(slot_path, writable=False)
        with pytest.raises(RuntimeError, match="read-only"):
            reader.delete([100])


def test_concurrent_appends_and_searches(slot_path: Path, vectors: np.ndarray):
    job_ids = make_items(N)["job_id"].to_numpy()
    rows = np.random.default_rng(5).permutation(N)[:2000]
    acked: list[int] = []  # rows whose delete returned, in order
    failures: list[str] = []
    searches = [0, 0]
    live = open_live(slot_path)

    def writer() -> None:
        for batch in np.array_split(rows, 400):
            live.delete(job_ids[batch])
            acked.extend(batch.tolist())

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while len(acked) < len(rows):
            done = len(acked)  # everything acknowledged before the search must be invisible
            pick = rows[rng.integers(0, len(rows), 16)]
            _, found = live.search(vectors[pick], K)
            if np.isin(found, job_ids[acked[:done]]).any() or (found < 0).any():
                failures.append(f"stale or short result after {done} deletes")
            searches[seed] += 1

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader, args=(s,)) for s in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    live.close()
    assert failures == [] and live.stats()["deleted_rows"] == len(rows)
    assert min(searches) > 10, searches  # the readers really overlapped the writes


def test_compaction_keeps_recall_and_every_write(
    slot_path: Path, vectors: np.ndarray, monkeypatch: pytest.MonkeyPatch
):
    items = make_items(N)
    rows = np.random.default_rng(6).choice(N, N // 10, replace=False)
    live = open_live(slot_path)
    live.delete(items["job_id"].to_numpy()[rows])
    live.upsert(items.iloc[rows], vectors[rows])  # re-insert the same vectors
    late = pd.DataFrame({"job_id": [10**9], "title": ["late"], "remote": [False]})
    late["posted_at"] = pd.Timestamp("2026-03-01")
    real_write_slot = handover_module.write_slot

    def write_slot_while_appending(*args, **kwargs):  # a write lands mid-compaction
        live.upsert(late, unit_rows(1, D, seed=8))
        return real_write_slot(*args, **kwargs)

    monkeypatch.setattr(handover_module, "write_slot", write_slot_while_appending)
    new_path = fold_into_slot(live, slot_path.parent, "ivf-compacted", IVF)
    compacted = load_slot(new_path)
    fresh = write_slot(slot_path.parent, "fresh", vectors, items, "v1", IVF)

    queries = recall_queries(vectors, 2000, seed=11, noise=0.1)
    _, truth_rows = exact_topk(vectors, queries, K)
    truth = items["job_id"].to_numpy()[truth_rows]

    def recall(search) -> float:
        found = search(queries, K)[1]
        return float(
            np.mean([len(np.intersect1d(t, f)) / K for t, f in zip(truth, found, strict=True)])
        )

    served = [open_live(p, writable=False) for p in (fresh, new_path)]  # the path serving takes
    r_fresh, r_compacted = recall(served[0].search), recall(served[1].search)
    assert abs(r_compacted - r_fresh) <= 0.01, (r_compacted, r_fresh)
    assert recall(live.search) >= r_fresh - 0.01  # the live merge loses nothing either
    assert compacted.manifest["item_count"] == N
    assert compacted.manifest["lineage"] == {"compacted_from": "ivf", "through_lsn": 2}
    assert compacted.model_version == "v1"
    with pytest.raises(RuntimeError, match="compacted into ivf-compacted"):
        live.delete([100])  # the old slot is sealed: writes go to the new one
    with open_live(new_path) as new_live:  # the mid-compaction write was carried over
        assert new_live.stats()["lsn"] == 1 and new_live.delta()[0].tolist() == [10**9]
    live.close()
    with open_live(slot_path) as old:  # old slot and log intact, for rollback
        assert old.stats()["lsn"] == 3 and old.snapshot.manifest["item_count"] == N


@pytest.mark.parametrize("slot_path", ["flat"], indirect=True)
def test_delta_search_paths_agree_with_many_superseded_versions(
    slot_path: Path, monkeypatch: pytest.MonkeyPatch
):
    items, queries = make_items(3000), unit_rows(50, D, seed=12)
    with open_live(slot_path) as live:
        for seed in range(3):  # every version but the last is a dead delta position
            live.upsert(items.iloc[:400], unit_rows(400, D, seed=20 + seed))
        assert live.stats()["dead_delta_positions"] == 800
        fast = live.search(queries, K)
        monkeypatch.setattr(delta, "FEW_DEAD", 0)  # force the masked full-matrix path
        masked = live.search(queries, K)
    np.testing.assert_array_equal(fast[1], masked[1])
    np.testing.assert_allclose(fast[0], masked[0], atol=1e-5)
    # And both equal exact search over the jobs as they are now.
    now = np.vstack([unit_rows(400, D, seed=22), np.asarray(live.snapshot.vectors[400:])])
    _, rows = exact_topk(now, queries, K)
    np.testing.assert_array_equal(fast[1], items["job_id"].to_numpy()[rows])


def test_delta_tables_merge_into_few_tables_of_doubling_size() -> None:
    """Tiny upsert tables are merged every few appends (TABLES_MERGE) without merging the whole
    delta again each time: rows keep their order, merges shrink from the first on, few of them, and
    each row is merged again about log2(rows / batch) times, not rows / batch times."""
    tables: list[pa.Table] = []
    merged, remerged, n = 0, 0, 0
    rng = np.random.default_rng(0)
    for _ in range(6000):
        m = int(rng.integers(1, 6))
        tables.append(pa.table({"job_id": np.arange(n, n + m)}))
        n += m
        if len(tables) - merged >= 16:
            tables, merged = merge_tables(tables, merged)
            remerged += tables[-1].num_rows
    whole = pa.concat_tables(tables).column("job_id").to_numpy()
    np.testing.assert_array_equal(whole, np.arange(n))
    sizes = [t.num_rows for t in tables[:merged]]
    assert all(a > b for a, b in itertools.pairwise(sizes)), sizes
    assert merged <= np.log2(n / 16) + 1, sizes
    assert len(tables) - merged < 16
    assert remerged <= n * (np.log2(n / 16) + 1) and remerged < n * 20, remerged / n
