"""What the ranking stage reads from Feast on a real published repo: the popularity views
(``job_popularity``, ``company_popularity``) equal the point-in-time join training makes, and
``serving.ranking.PopularityCache`` reads each key once (one Feast call per request at most),
including after it starts over past its key bound."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from ebr.rank.popularity import as_of, popularity_tables
from feature_repo import store as feast_store
from serving import ranking
from tests.pipelines.test_feast_store import N_JOBS, _make_workspace

pytestmark = pytest.mark.slow  # the real Feast store


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("workspace")
    _make_workspace(root)
    rng = np.random.default_rng(4)
    jobs = pd.DataFrame({"job_id": np.arange(1, N_JOBS + 1),
                         "company": [f"co{i % 4}" for i in range(N_JOBS)]})  # fmt: skip
    n = 600
    log = pd.DataFrame({
        "job_id": rng.integers(1, N_JOBS + 1, n),
        "ts": pd.Timestamp("2026-10-20", tz="UTC") + pd.to_timedelta(rng.integers(0, 9 * 86400, n),
                                                                      unit="s"),
        "outcome": rng.choice(["none", "click", "save", "apply"], n, p=[0.7, 0.15, 0.05, 0.1]),
    })  # fmt: skip
    jobs.to_parquet(root / "data" / "jobs.parquet")
    log.to_parquet(root / "data" / "impressions.parquet")
    report = feast_store.publish(root, "v1")
    return {"root": root, "jobs": jobs, "log": log, "report": report}


def test_online_popularity_is_the_training_join_as_of_now(published: dict[str, Any]) -> None:
    store = feast_store.open_store(published["root"] / "feature_repo")
    jobs = published["jobs"]
    ids, comps = jobs["job_id"].tolist(), jobs["company"].tolist()
    counts, vecs = feast_store.rank_features(store, ids, comps)
    job_t, comp_t = popularity_tables(published["log"], jobs)
    now = [pd.Timestamp.now(tz="UTC")] * len(ids)
    want = np.concatenate([as_of(job_t, "job_id", np.array(ids), now),
                           as_of(comp_t, "company", np.array(comps), now)], axis=1)  # fmt: skip
    assert vecs is None and counts.shape == (N_JOBS, 6)
    assert (counts == want).all() and counts[:, 0].sum() > 0
    assert published["report"]["popularity_rows"]["job"] == len(job_t)
    unknown, _ = feast_store.rank_features(store, [10_000], ["nobody"])
    assert unknown.tolist() == [[0] * 6]


def test_the_cache_reads_each_key_once_and_survives_starting_over(
    published: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = feast_store.open_store(published["root"] / "feature_repo")
    jobs = published["jobs"]
    ids, comps = jobs["job_id"].tolist(), jobs["company"].tolist()
    direct, _ = feast_store.rank_features(store, ids, comps)
    cache = ranking.PopularityCache(store)
    first, _ = cache.get(ids[:10], comps[:10])
    assert cache.reads == 1 and (first == direct[:10]).all()
    again, _ = cache.get(ids[:10], comps[:10])
    assert cache.reads == 1 and (again == first).all()  # kept: no read
    mixed, _ = cache.get(ids[5:20], comps[5:20])
    assert cache.reads == 2 and cache.keys_read == 20 and (mixed == direct[5:20]).all()
    # A bound above one request's keys (10 jobs, 4 companies) that the cache soon passes.
    monkeypatch.setattr(ranking, "POPULARITY_MAX_KEYS", 16)
    for lo in (20, 0, 5, 12):  # 5: half kept, half read (the reset drops the kept half)
        reads = cache.reads
        got, _ = cache.get(ids[lo : lo + 10], comps[lo : lo + 10])
        assert (got == direct[lo : lo + 10]).all(), lo
        assert cache.reads - reads <= 2
