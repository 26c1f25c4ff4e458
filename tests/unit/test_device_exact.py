"""The ``exact`` slot kind: every query scanned by torch on the device present (the CPU here),
the filter applied as a mask before the top-k. Pages equal the brute-force truth, filtered or
not, through a loaded slot, a live slot's deletes and upserts, and the planner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ebr.config import IndexConfig
from ebr.index.build.writer import write_slot
from ebr.index.live.slot import open_live
from ebr.index.query import device
from ebr.index.query.planner import filtered_search
from ebr.index.query.slot import load_slot

N, D = 3_000, 16


def unit_rows(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def truth(vectors: np.ndarray, q: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    scores = q @ vectors.T
    scores[:, ~mask] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.where(np.take_along_axis(scores, top, 1) > -np.inf, top, -1)


@pytest.fixture(scope="module")
def slot_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    items = pd.DataFrame({"job_id": np.arange(N, dtype=np.int64) * 7 + 3,
                          "title": [f"job {i}" for i in range(N)]})  # fmt: skip
    root = tmp_path_factory.mktemp("slots")
    return write_slot(root, "exact", unit_rows(N, 0), items, "v1", IndexConfig(kind="exact"))


def test_an_exact_slot_is_searched_on_the_device_and_matches_brute_force(slot_path: Path) -> None:
    slot = load_slot(slot_path)
    assert slot.manifest["index"]["kind"] == "exact"
    on = device.attached(slot.index)
    assert on is not None and on.device.type == device.default_device()
    q = unit_rows(70, 1)  # more than one query block
    vectors = np.asarray(slot.vectors)
    rng = np.random.default_rng(2)
    for share in (1.0, 0.5, 0.01, 3 / N, 0.0):  # unfiltered to nothing eligible
        mask = rng.random(N) < share
        eligible = None if share == 1.0 else mask
        scores, rows, plan = filtered_search(slot.index, vectors, q, 10, eligible)
        full = np.ones(N, bool) if eligible is None else mask
        assert plan.strategy == "exact_device" and plan.eligible == int(full.sum())
        want = truth(vectors, q, full, 10)
        # Ties aside (random floats have none), the rows and their order are the truth's.
        np.testing.assert_array_equal(rows, want)
        ok = rows >= 0
        np.testing.assert_allclose(scores[ok], (q @ vectors.T)[np.nonzero(ok)[0], rows[ok]],
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
        assert np.isneginf(scores[~ok]).all()
        assert (ok.sum(1) == min(10, int(full.sum()))).all()


def test_a_live_exact_slot_answers_deletes_and_upserts_exactly(slot_path: Path) -> None:
    q = unit_rows(5, 3)
    with open_live(slot_path) as live:
        assert device.attached(live.snapshot.index) is not None
        first = live.search(q, 5)[1]
        live.delete(first[:, 0])  # every query's best job
        new_id = 10**6
        live.upsert(pd.DataFrame({"job_id": [new_id], "title": ["new"]}), q[:1].copy())
        scores, ids = live.search(q, 5)
    snap = np.asarray(load_slot(slot_path).vectors)
    mask = np.ones(N, bool)
    mask[(first[:, 0] - 3) // 7] = False
    want = truth(snap, q, mask, 5) * 7 + 3
    assert ids[0, 0] == new_id and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(ids[0, 1:], want[0, :4])  # the new job, then the truth
    np.testing.assert_array_equal(ids[1:], want[1:])
    assert not np.isin(first[:, 0], ids).any()
