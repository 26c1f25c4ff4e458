"""Index building and slots on random unit vectors: recall floors, round trips, atomicity.

Run: ``pytest -q tests/unit/test_index.py``
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest

from ebr.config import IndexConfig
from ebr.index.build.faiss_index import ann_recall_at_k, build_index
from ebr.index.build.writer import slot_name_for, write_slot
from ebr.index.live.slot import open_live
from ebr.index.query.slot import DATA_FILES, Slot, load_slot
from ebr.metrics import exact_topk

N, D = 5_000, 32


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return unit_rows(N, D, seed=0)


def make_items(n: int) -> pd.DataFrame:
    # Job ids deliberately differ from row numbers so a row/id mix-up shows.
    return pd.DataFrame(
        {
            "job_id": np.arange(n, dtype=np.int64) * 7 + 1000,
            "title": [f"title {i}" for i in range(n)],
            "company": [f"company {i % 13}" for i in range(n)],
            "city": [f"city {i % 5}" for i in range(n)],
        }
    )


# Random gaussian data is the hardest case for IVF/PQ (no clusters); measured recall on it is
# ~0.98 for both ANN settings below, so these floors leave a wide margin and still catch a
# broken metric, nprobe or refine (those drop recall to ~0.1-0.7).
@pytest.mark.parametrize(
    ("cfg", "floor"),
    [
        (IndexConfig(kind="flat"), 1.0),
        (IndexConfig(kind="ivf", nprobe=64), 0.9),
        (IndexConfig(kind="ivfpq", nprobe=64, pq_m=16, pq_nbits=4, refine=10), 0.85),
        (IndexConfig(kind="ivfpq", nprobe=64, pq_m=8, pq_nbits=8, refine=10), 0.85),
    ],
    ids=["flat", "ivf", "ivfpq-4bit-fastscan", "ivfpq-8bit"],
)
def test_index_kinds_reach_recall_floor(vectors: np.ndarray, cfg: IndexConfig, floor: float):
    index, info = build_index(vectors, cfg)
    assert index.ntotal == N
    assert info["kind"] == cfg.kind and not info["degraded_to_flat"]
    if cfg.kind != "flat":
        assert 1 <= info["nlist"] <= N // 39  # enough training points per cell
        assert info["nprobe"] == min(cfg.nprobe, info["nlist"])
    if cfg.kind == "ivfpq":
        assert isinstance(index, faiss.IndexRefineFlat)
        assert ("x4fs" in info["factory"]) == (cfg.pq_nbits == 4)
    assert ann_recall_at_k(index, vectors, n_queries=200, k=10, seed=1) >= floor


def test_small_catalogue_degrades_to_flat():
    index, info = build_index(unit_rows(300, D, seed=2), IndexConfig(kind="ivfpq", pq_m=8))
    assert info["degraded_to_flat"] and info["kind"] == "flat"
    assert isinstance(index, faiss.IndexFlatIP)


def test_pq_m_must_divide_dim(vectors: np.ndarray):
    with pytest.raises(ValueError, match=r"pq_m=12.*d=32"):
        build_index(vectors, IndexConfig(kind="ivfpq", pq_m=12))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.ones((10, 4), dtype=np.float64), "float32"),
        (np.ones(4, dtype=np.float32), "2-D"),
        (np.full((10, 4), np.nan, dtype=np.float32), "NaN"),
        (np.ones((10, 4), dtype=np.float32), "normalised"),
    ],
)
def test_build_rejects_bad_vectors(bad: np.ndarray, message: str):
    with pytest.raises(ValueError, match=message):
        build_index(bad, IndexConfig(kind="flat"))


def test_exact_topk_matches_numpy(vectors: np.ndarray):
    queries = vectors[:50]
    scores, idx = exact_topk(vectors, queries, k=5)
    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :5]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)  # each row finds itself first


@pytest.fixture(scope="module")
def slot_dir(tmp_path_factory: pytest.TempPathFactory, vectors: np.ndarray) -> Path:
    cfg = IndexConfig(kind="ivfpq", nprobe=64, pq_m=16, pq_nbits=4, refine=10, recall_queries=200)
    slots = tmp_path_factory.mktemp("slots")
    return write_slot(slots, "jobs-v1-test", vectors, make_items(N), "v1", cfg)


def test_slot_round_trip_returns_nearest_job_ids(slot_dir: Path, vectors: np.ndarray):
    slot = load_slot(slot_dir)
    assert slot.model_version == "v1" and slot.dim == D
    rows = np.array([3, 1234, 4999])
    scores, job_ids = open_live(slot.path, writable=False).search(vectors[rows], k=5)
    assert scores.shape == job_ids.shape == (3, 5) and job_ids.dtype == np.int64
    # Each stored vector's own job is its nearest neighbour.
    np.testing.assert_array_equal(job_ids[:, 0], make_items(N)["job_id"].to_numpy()[rows])
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    # nprobe and refine k_factor survive write_index/read_index: recall matches the manifest.
    assert ann_recall_at_k(slot.index, vectors, n_queries=200, k=10, seed=1) >= 0.85
    shown = slot.rows(job_ids[:, 0])
    assert shown["title"].tolist() == [f"title {r}" for r in rows]


def test_manifest_records_build(slot_dir: Path):
    manifest = json.loads((slot_dir / "manifest.json").read_text())
    for key in (
        "format_version",
        "name",
        "model_version",
        "dim",
        "metric",
        "index",
        "item_count",
        "recall_at_10",
        "recall_queries",
        "build_seconds",
        "created_at",
        "checksums",
    ):
        assert key in manifest, key
    assert manifest["metric"] == "cosine" and manifest["item_count"] == N
    assert manifest["index"]["factory"].startswith("IVF") and manifest["recall_queries"] == 200
    assert 0.85 <= manifest["recall_at_10"] <= 1.0
    files = set(manifest["checksums"])
    assert {"index.faiss", "items.parquet", "vectors.npy", "terms/stats.json"} <= files
    assert all(f in DATA_FILES or f.startswith("terms/") for f in files)


def test_tampered_file_fails_checksum(tmp_path: Path):
    path = write_slot(
        tmp_path, "s", unit_rows(50, 8, 3), make_items(50), "v1", IndexConfig(kind="flat")
    )
    # A valid but different table: only the checksum can tell.
    make_items(50).assign(title="edited").to_parquet(path / "items.parquet", index=False)
    with pytest.raises(ValueError, match="checksum mismatch for items.parquet"):
        load_slot(path)
    assert load_slot(path, verify=False).items["title"].iloc[0] == "edited"


def test_existing_slot_is_not_overwritten(slot_dir: Path, vectors: np.ndarray):
    before = (slot_dir / "manifest.json").read_bytes()
    with pytest.raises(FileExistsError):
        write_slot(slot_dir.parent, slot_dir.name, vectors, make_items(N), "v2", IndexConfig())
    assert (slot_dir / "manifest.json").read_bytes() == before


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def broken_write(index: faiss.Index, path: str) -> None:
        Path(path).write_bytes(b"partial")  # a crash mid-write leaves a partial file behind
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", broken_write)
    with pytest.raises(OSError, match="disk full"):
        write_slot(
            tmp_path, "s", unit_rows(50, 8, 4), make_items(50), "v1", IndexConfig(kind="flat")
        )
    assert list(tmp_path.iterdir()) == []  # no slot, no temp directory left behind


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda v, it: (v, it.iloc[:-1]), "rows"),
        (lambda v, it: (v, it.assign(job_id=np.zeros(len(it), dtype=np.int64))), "unique"),
        (lambda v, it: (v, it.drop(columns="job_id")), "job_id"),
        (lambda v, it: (np.where(np.arange(len(v))[:, None] == 3, np.nan, v), it), "NaN"),
    ],
    ids=["misaligned", "duplicate-ids", "no-job-id", "nan"],
)
def test_write_slot_validates_inputs(tmp_path: Path, change, message: str):
    v, it = change(unit_rows(50, 8, 5), make_items(50))
    with pytest.raises(ValueError, match=message):
        write_slot(tmp_path, "s", v.astype(np.float32), it, "v1", IndexConfig(kind="flat"))
    assert not (tmp_path / "s").exists()


def test_slot_name_for_is_unique_and_valid():
    first, second = slot_name_for("v3"), slot_name_for("v3")
    assert first.startswith("jobs-v3-") and first != second
    with pytest.raises(ValueError):
        slot_name_for("../evil")


@pytest.fixture(scope="module")
def small_slot(tmp_path_factory: pytest.TempPathFactory) -> Slot:
    path = write_slot(
        tmp_path_factory.mktemp("small"),
        "tiny",
        unit_rows(6, 8, 8),
        make_items(6),
        "v1",
        IndexConfig(kind="ivfpq", pq_m=4),  # degrades to flat at 6 items
    )
    return load_slot(path)


def test_k_larger_than_item_count_pads(small_slot: Slot):
    scores, job_ids = open_live(small_slot.path, writable=False).search(unit_rows(2, 8, 9), 10)
    assert job_ids.shape == (2, 10)
    assert np.all(job_ids[:, 6:] == -1) and np.all(np.isneginf(scores[:, 6:]))
    assert sorted(job_ids[0, :6]) == sorted(make_items(6)["job_id"])
    assert len(small_slot.rows(job_ids[0])) == 6  # padding ids are skipped


def test_wrong_query_dim_is_rejected(small_slot: Slot):
    live = open_live(small_slot.path, writable=False)
    with pytest.raises(ValueError, match=r"expects d=8, got d=16"):
        live.search(unit_rows(1, 16, 10), k=3)
    with pytest.raises(ValueError, match="2-D"):
        live.search(unit_rows(1, 8, 10)[0], k=3)


def test_rows_rejects_unknown_job_ids(small_slot: Slot):
    with pytest.raises(KeyError, match="not in slot"):
        small_slot.rows([123456789])


def test_records_are_the_rows_as_plain_values(small_slot: Slot):
    """``Slot.records`` (what a response shows) holds the same values as ``Slot.rows``, as
    plain Python values with nulls as None, in the order asked; unknown ids are refused."""
    ids = small_slot.job_ids[[3, 0, 5]].tolist()
    records = small_slot.records(ids)
    frame = small_slot.rows(ids)
    assert [r["job_id"] for r in records] == ids
    for record, (_, row) in zip(records, frame.iterrows(), strict=True):
        for key, value in record.items():
            assert not isinstance(value, np.generic), (key, type(value))
            expected = row[key]
            if isinstance(expected, float) and expected != expected:
                assert value is None
            elif isinstance(expected, np.ndarray):
                assert list(value) == list(expected)
            else:
                assert value == expected, key
    with pytest.raises(KeyError, match="not in slot"):
        small_slot.records([ids[0], 123456789])
