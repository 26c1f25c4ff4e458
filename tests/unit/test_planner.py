"""Filtered search planner on clustered unit vectors: every strategy, every index kind.

Run: ``pytest -q tests/unit/test_planner.py``

Ground truth is a numpy matmul over the eligible rows only; the planner must never return an
ineligible row and must return min(k, eligible) rows per query, whatever the strategy.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebr.config import IndexConfig
from ebr.index.build.faiss_index import build_index
from ebr.index.build.tune import tune
from ebr.index.query.planner import Plan, PlannerParams, _check_results, filtered_search
from ebr.index.query.probing import suspects
from ebr.metrics import recall_of

N, D, K, Q = 4_000, 32, 10, 40
KINDS = ("flat", "ivf", "ivfpq", "hnsw")
FORCE = {
    "exact": PlannerParams(exact_max_eligible=N),
    "ann": PlannerParams(exact_max_eligible=0, exact_max_fraction=0.0),
    "auto": PlannerParams(exact_max_eligible=400),  # 10% of N: both paths reachable
}


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    """Unit vectors around 40 random centres (real embeddings cluster; uniform noise doesn't)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, d))
    x = centres[rng.integers(0, 40, n)] + 0.5 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered(N, D, seed=0)


@pytest.fixture(scope="module")
def queries(vectors: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1)
    q = vectors[rng.choice(N, Q, replace=False)] + 0.3 * rng.standard_normal((Q, D)) / np.sqrt(D)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def indexes(vectors: np.ndarray) -> dict[str, Any]:
    cfg = {
        "flat": IndexConfig(kind="flat"),
        "ivf": IndexConfig(kind="ivf", nlist=64, nprobe=8),
        "ivfpq": IndexConfig(kind="ivfpq", nlist=64, nprobe=8, pq_m=16, pq_nbits=4, refine=4),
        "hnsw": IndexConfig(kind="hnsw", hnsw_m=16, ef_construction=40, ef_search=32),
    }
    return {kind: build_index(vectors, c)[0] for kind, c in cfg.items()}


def truth(vectors: np.ndarray, queries: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k rows among ``mask`` by brute-force matmul: int64 [q, min(k, m)]."""
    rows = np.flatnonzero(mask)
    scores = queries @ vectors[rows].T
    return rows[np.argsort(-scores, axis=1, kind="stable")[:, : min(k, len(rows))]]


def check_invariants(rows: np.ndarray, scores: np.ndarray, mask: np.ndarray, k: int) -> None:
    need = min(k, int(mask.sum()))
    assert rows.shape == scores.shape == (len(rows), k)
    assert (rows[:, :need] >= 0).all() and (rows[:, need:] == -1).all()
    assert mask[rows[:, :need]].all(), "an ineligible row was returned"
    assert np.isneginf(scores[:, need:]).all()
    assert (np.diff(scores[:, :need], axis=1) <= 1e-6).all(), "scores must descend"


def random_mask(n: int, size: int, seed: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).choice(n, size, replace=False)] = True
    return mask


@pytest.mark.parametrize("kind", KINDS)
def test_exact_subset_equals_filtered_ground_truth(
    kind: str, indexes: dict[str, Any], vectors: np.ndarray, queries: np.ndarray
) -> None:
    mask = random_mask(N, 1_200, seed=2)
    scores, rows, plan = filtered_search(indexes[kind], vectors, queries, K, mask, FORCE["exact"])
    assert plan.strategy == "exact_subset" and plan.eligible == 1_200
    np.testing.assert_array_equal(rows, truth(vectors, queries, mask, K))
    expected = np.take_along_axis(queries @ vectors.T, rows, axis=1)
    np.testing.assert_allclose(scores, expected, atol=1e-5)


@pytest.mark.parametrize(("kind", "floor"), [("ivf", 0.97), ("ivfpq", 0.9), ("hnsw", 0.9)])
@pytest.mark.parametrize("size", [400, 2_000])
def test_ann_filtered_recall_floor(
    kind: str,
    floor: float,
    size: int,
    indexes: dict[str, Any],
    vectors: np.ndarray,
    queries: np.ndarray,
) -> None:
    mask = random_mask(N, size, seed=size)
    params = PlannerParams(exact_max_eligible=0, exact_max_fraction=0.0, nprobe=16)
    scores, rows, plan = filtered_search(indexes[kind], vectors, queries, K, mask, params)
    assert plan.strategy == "ann_filtered"
    check_invariants(rows, scores, mask, K)
    gt = truth(vectors, queries, mask, K)
    recall = np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(rows, gt, strict=True)])
    assert recall >= floor, (kind, size, recall, asdict(plan))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [1, K - 1, K, K + 1])
def test_tiny_eligible_sets_still_fill_the_page(
    kind: str, size: int, indexes: dict[str, Any], vectors: np.ndarray, queries: np.ndarray
) -> None:
    mask = random_mask(N, size, seed=size)
    for force in ("ann", "exact"):
        scores, rows, plan = filtered_search(indexes[kind], vectors, queries, K, mask, FORCE[force])
        check_invariants(rows, scores, mask, K)
        if size <= K:  # the whole eligible set is the answer
            assert all(set(r[r >= 0]) == set(np.flatnonzero(mask)) for r in rows)


def _cells(index: Any, vectors: np.ndarray) -> np.ndarray:
    """IVF cell of each row, int [n]."""
    ivf: Any = faiss.extract_index_ivf(index)
    return ivf.quantizer.search(vectors, 1)[1].ravel()


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_eligible_rows_in_one_far_ivf_cell(
    kind: str, indexes: dict[str, Any], vectors: np.ndarray, queries: np.ndarray
) -> None:
    index = indexes[kind]
    ivf: Any = faiss.extract_index_ivf(index)
    cell = _cells(index, vectors)
    sizes = np.bincount(cell, minlength=ivf.nlist)
    # The cell of at least K + 1 rows least similar to the first query: a filter correlated
    # with the vectors, the way a far-away region is for most searches.
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    target = next(c for c in np.argsort(centroids @ queries[0]) if sizes[c] > K)
    mask = cell == target
    params = PlannerParams(exact_max_eligible=0, exact_max_fraction=0.0, nprobe=1)
    scores, rows, plan = filtered_search(index, vectors, queries, K, mask, params)
    check_invariants(rows, scores, mask, K)
    # Cells without eligible rows are never probed: the one far cell is the only probe, in
    # the first round (nearest-first probing of all cells would need most of them).
    assert plan.rounds == 1 and plan.fallback_queries == 0
    assert plan.nprobe == plan.nprobe_max == 1
    gt = truth(vectors, queries, mask, K)
    recall = np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(rows, gt, strict=True)])
    assert recall >= (0.9 if kind == "ivfpq" else 1.0), recall


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw"])
def test_short_pages_are_retried_then_answered_exactly(
    kind: str, indexes: dict[str, Any], vectors: np.ndarray, queries: np.ndarray
) -> None:
    # One eligible row in each of 40 cells and k=30: the first probes hold too few of them.
    cell = _cells(indexes["ivf"], vectors)
    first_rows = np.unique(cell, return_index=True)[1][:40]
    mask = np.zeros(N, dtype=bool)
    mask[first_rows] = True
    params = PlannerParams(
        exact_max_eligible=0, exact_max_fraction=0.0, nprobe=1, ef_search=1, max_rounds=2
    )
    scores, rows, plan = filtered_search(indexes[kind], vectors, queries, 30, mask, params)
    check_invariants(rows, scores, mask, 30)
    assert plan.retried_queries > 0 or kind == "hnsw", asdict(plan)
    fell_back = plan.fallback_queries
    if kind != "hnsw":
        assert fell_back > 0, asdict(plan)
        np.testing.assert_array_equal(rows, truth(vectors, queries, mask, 30))


@pytest.mark.parametrize("kind", KINDS)
def test_empty_eligible_set_returns_padding(
    kind: str, indexes: dict[str, Any], vectors: np.ndarray, queries: np.ndarray
) -> None:
    mask = np.zeros(N, dtype=bool)
    scores, rows, plan = filtered_search(indexes[kind], vectors, queries, K, mask)
    assert (rows == -1).all() and np.isneginf(scores).all()
    assert plan.eligible == 0 and plan.strategy == "exact_subset"


@pytest.mark.parametrize("kind", KINDS)
def test_unfiltered_and_all_eligible_use_the_index(
    kind: str, indexes: dict[str, Any], vectors: np.ndarray, queries: np.ndarray
) -> None:
    for eligible in (None, np.ones(N, dtype=bool)):
        scores, rows, plan = filtered_search(indexes[kind], vectors, queries, K, eligible)
        assert plan.strategy == "ann" and plan.selectivity == 1.0
        check_invariants(rows, scores, np.ones(N, dtype=bool), K)


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    force=st.sampled_from(sorted(FORCE)),
    density=st.sampled_from([0.0005, 0.003, 0.02, 0.1, 0.5, 0.95]),
    k=st.integers(1, 25),
    seed=st.integers(0, 10**6),
)
def test_invariants_hold_for_any_mask(
    kind: str,
    force: str,
    density: float,
    k: int,
    seed: int,
    indexes: dict[str, Any],
    vectors: np.ndarray,
    queries: np.ndarray,
) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random(N) < density
    scores, rows, plan = filtered_search(indexes[kind], vectors, queries[:8], k, mask, FORCE[force])
    check_invariants(rows, scores, mask, k)
    json.dumps(asdict(plan))  # the plan travels in API responses and logs
    if plan.strategy == "exact_subset" and mask.any():
        np.testing.assert_array_equal(
            rows[:, : min(k, mask.sum())], truth(vectors, queries[:8], mask, k)
        )


def test_planner_picks_exact_below_the_threshold_and_ann_above(
    indexes: dict[str, Any], vectors: np.ndarray, queries: np.ndarray
) -> None:
    params = FORCE["auto"]
    _, _, low = filtered_search(
        indexes["ivfpq"], vectors, queries, K, random_mask(N, 400, 1), params
    )
    _, _, high = filtered_search(
        indexes["ivfpq"], vectors, queries, K, random_mask(N, 401, 1), params
    )
    assert (low.strategy, high.strategy) == ("exact_subset", "ann_filtered")
    # Probes grow as selectivity drops, ~8 / sqrt(401 / 4000) = 25 cells for a mask independent
    # of the vectors (per query: until the probed cells hold as many eligible rows).
    assert high.nprobe is not None and high.nprobe_max is not None
    assert 8 < high.nprobe <= 25 <= high.nprobe_max < 64 and high.k_factor == 4.0


def test_internal_check_catches_ineligible_rows() -> None:
    mask = np.array([True, False, True, True])
    with pytest.raises(AssertionError, match=r"ineligible rows \[1\]"):
        _check_results(np.array([[0, 1]]), 4, mask, 2, "test")
    with pytest.raises(AssertionError, match="not exactly 2 left-aligned results"):
        _check_results(np.array([[0, -1]]), 4, mask, 2, "test")
    with pytest.raises(AssertionError, match="same row twice"):
        _check_results(np.array([[0, 0]]), 4, mask, 2, "test")


def test_bad_inputs_are_rejected(
    indexes: dict[str, Any], vectors: np.ndarray, queries: np.ndarray
) -> None:
    index = indexes["ivf"]
    with pytest.raises(ValueError, match="bool mask of shape"):
        filtered_search(index, vectors, queries, K, np.ones(N - 1, dtype=bool))
    with pytest.raises(ValueError, match="bool mask of shape"):
        filtered_search(index, vectors, queries, K, np.ones(N, dtype=np.int8))
    with pytest.raises(ValueError, match="k must be >= 1"):
        filtered_search(index, vectors, queries, 0, None)
    with pytest.raises(ValueError, match="queries must be"):
        filtered_search(index, vectors, queries[:, :5], K, None)
    with pytest.raises(ValueError, match="selectivity_exponent in"):
        PlannerParams(selectivity_exponent=-1)


def test_plan_is_json() -> None:
    plan = Plan("ann", 10, 10, 1.0, 3, 4, 4, None, None, 1, 0, 0, False)
    assert json.loads(json.dumps(asdict(plan)))["strategy"] == "ann"


# ---- filters correlated with the vectors (eligibility by cluster): recall must hold ----

CN, CD, CLUSTERS = 50_000, 32, 200  # eligible ~42%: above exact_max_eligible, so ANN runs


@pytest.fixture(scope="module")
def far() -> dict[str, Any]:
    """50k rows around 200 centres; eligibility decided by cluster: the clusters farthest along
    a random direction (~42% of rows), queries near the clusters at the other end."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((CLUSTERS, CD)).astype(np.float32)
    label = rng.integers(0, CLUSTERS, CN)
    x = centres[label] + 0.35 * rng.standard_normal((CN, CD)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    along = centres @ rng.standard_normal(CD).astype(np.float32)
    eligible = (along > np.quantile(along, 0.58))[label]
    near = rng.choice(np.flatnonzero(along < np.quantile(along, 0.3)), 100)
    q = centres[near] + 0.35 * rng.standard_normal((100, CD)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    masks = {"far": eligible, "near": ~eligible, "random": rng.random(CN) < 0.42}
    indexes = {}
    for kind in ("ivf", "ivfpq", "hnsw"):
        cfg = IndexConfig(kind=kind, hnsw_m=16)
        indexes[kind] = build_index(x, cfg)[0]
        tune(indexes[kind], x, cfg, n_queries=200)  # target recall 0.95, filtered gate included
    return {"x": x, "q": q, "masks": masks, "indexes": indexes}


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw"])
def test_far_region_filter_keeps_recall_and_says_what_it_did(kind: str, far: dict[str, Any]):
    index, x, q, mask = far["indexes"][kind], far["x"], far["q"], far["masks"]["far"]
    gt = truth(x, q, mask, K)
    scores, rows, plan = filtered_search(index, x, q, K, mask)
    assert plan.strategy == "ann_filtered"
    check_invariants(rows, scores, mask, K)
    assert recall_of(rows, gt) >= 0.95, asdict(plan)
    # The same search without the safeguards is what the issue measured: full pages, wrong rows.
    if kind == "hnsw":
        sp = faiss.SearchParametersHNSW(sel=faiss.IDSelectorBatch(np.flatnonzero(mask)))
        sp.efSearch = plan.ef_search or index.hnsw.efSearch
        naive = index.search(q, K, params=sp)[1]
        assert plan.switched_queries + plan.suspect_queries > 0 and plan.fallback
    else:
        bare = PlannerParams(margin_quantile=None, check_rows=0)
        naive = filtered_search(index, x, q, K, mask, bare)[1]
        assert plan.widened_queries > 0 and plan.nprobe_final > plan.nprobe_max  # type: ignore[operator]
    assert recall_of(naive, gt) < 0.95, recall_of(naive, gt)
    assert plan.fallback == (plan.fallback_queries > 0)
    assert plan.fallback_queries >= plan.switched_queries + plan.suspect_queries
    json.dumps(asdict(plan))


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw"])
@pytest.mark.parametrize("which", ["near", "random"])
def test_near_region_and_random_filters_keep_recall(
    kind: str, which: str, far: dict[str, Any]
) -> None:
    # The other way round (eligible rows around the queries) and independent of the vectors.
    x, q, mask = far["x"], far["q"], far["masks"][which]
    scores, rows, plan = filtered_search(far["indexes"][kind], x, q, K, mask)
    check_invariants(rows, scores, mask, K)
    assert recall_of(rows, truth(x, q, mask, K)) >= 0.95, asdict(plan)
    assert plan.fallback_queries <= len(q) // 10, asdict(plan)  # ANN answers nearly all


def test_check_catches_a_page_that_missed_the_eligible_region(
    indexes: dict[str, Any], vectors: np.ndarray, queries: np.ndarray
) -> None:
    # A page of the worst eligible rows: every sampled eligible row beats it.
    mask = random_mask(N, 2_000, seed=3)
    worst = np.argsort(queries @ vectors[mask].T, axis=1)[:, :K]
    rows = np.flatnonzero(mask)[worst]
    page = np.take_along_axis(queries @ vectors.T, rows, 1).astype(np.float32), rows
    assert suspects(vectors, mask, queries, page, K, 256).all()
    best = truth(vectors, queries, mask, K)
    good = np.take_along_axis(queries @ vectors.T, best, 1).astype(np.float32), best
    assert not suspects(vectors, mask, queries, good, K, 256).any()


# ---- the unfiltered fast path: one call of the index's own search, same answer and plan ----


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [K, 700])  # 700: more than 8 IVF cells hold, so pages come short
def test_unfiltered_pages_equal_the_planners_rounds(
    kind: str, k: int, indexes: dict[str, Any], vectors: np.ndarray, queries: np.ndarray
) -> None:
    from ebr.index.query.planner import DEFAULT_PARAMS, _parts, _planned

    index = indexes[kind]
    scores, rows, plan = filtered_search(index, vectors, queries, k, None)
    want_s, want_r, want_plan = _planned(
        index, _parts(index)[0], vectors, queries, k, None, DEFAULT_PARAMS
    )
    check_invariants(rows, scores, np.ones(N, dtype=bool), k)
    assert plan == want_plan
    if kind == "ivfpq":  # fast-scan codes tie; the exact re-rank of both keeps the same rows
        assert recall_of(rows, want_r) >= 0.99
    else:
        np.testing.assert_array_equal(rows, want_r)
        np.testing.assert_allclose(scores, want_s, rtol=1e-5)
    if kind in ("ivf", "ivfpq") and k > K:
        assert plan.retried_queries > 0 and plan.rounds > 1  # the planner re-probed them


def test_unfiltered_page_check_refuses_what_the_full_check_refuses() -> None:
    from ebr.index.query.planner import SMALL_BATCH, _full_pages

    good = np.array([[3, 1, 2, -1]])
    for rows in (good, np.repeat(good, SMALL_BATCH + 1, axis=0)):  # Python and numpy checks
        assert _full_pages(rows, 4, 3)
        for bad, n, need in ((np.array([[3, 3, 2, -1]]), 4, 3), (good, 3, 3), (good, 4, 4),
                             (np.array([[3, 1, 2, 0]]), 4, 3)):  # fmt: skip
            assert not _full_pages(np.repeat(bad, len(rows), axis=0), n, need)


# ---- deletes alone: the index's own search, post-filtered; frozen masks memoized ----


def _frozen(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out.flags.writeable = False
    return out


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw"])
@pytest.mark.parametrize("k", [K, 100])
@pytest.mark.parametrize("deleted", [20, 1_200])  # few; many (30%)
def test_postfiltered_pages_match_the_planners(
    kind: str, k: int, deleted: int, indexes: dict[str, Any], vectors: np.ndarray,
    queries: np.ndarray,
) -> None:  # fmt: skip
    """Deletes alone: exactly k eligible rows a query, at the planner's recall or better,
    batched and one query per call alike; no deleted row ever comes back."""
    from ebr.index.query.postfilter import postfiltered_search

    index, ann = indexes[kind], FORCE["ann"]  # ann: this small index would scan exactly
    mask = ~random_mask(N, deleted, seed=deleted)
    mask[truth(vectors, queries, np.ones(N, dtype=bool), 3).ravel()] = False  # their nearest
    scores, rows, plan = postfiltered_search(index, vectors, queries, k, _frozen(mask), ann)
    assert plan.strategy == "ann_postfiltered" and plan.eligible == int(mask.sum())
    check_invariants(rows, scores, mask, k)
    _, want, _ = filtered_search(index, vectors, queries, k, mask, ann)  # writable: planner
    exact = truth(vectors, queries, mask, k)
    assert recall_of(rows, exact) >= recall_of(want, exact) - (0.01 if kind == "hnsw" else 0)
    for i in range(0, Q, 7):  # one query per call: the same page
        s1, r1, _ = postfiltered_search(index, vectors, queries[i : i + 1], k, mask, ann)
        check_invariants(r1, s1, mask, k)
        assert recall_of(r1, rows[i : i + 1]) >= 0.99
        np.testing.assert_allclose(s1[0, :5], scores[i, :5], rtol=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw"])
def test_deletes_crowding_a_query_take_the_planner(
    kind: str, indexes: dict[str, Any], vectors: np.ndarray, queries: np.ndarray
) -> None:
    """A query whose nearest rows are all deleted (a company's jobs, say) comes back short
    from the index's search: the planner answers it, and only eligible rows are returned."""
    from ebr.index.query.postfilter import postfiltered_search

    mask = np.ones(N, dtype=bool)
    mask[truth(vectors, queries[:1], mask, 60)[0]] = False  # query 0's 60 nearest
    scores, rows, plan = postfiltered_search(
        indexes[kind], vectors, queries, K, _frozen(mask), FORCE["ann"]
    )
    check_invariants(rows, scores, mask, K)
    assert plan.strategy == "ann_postfiltered" and plan.retried_queries >= 1
    assert recall_of(rows[:1], truth(vectors, queries[:1], mask, K)) >= 0.9


def test_postfilter_leaves_what_it_does_not_serve_to_the_planner(
    indexes: dict[str, Any], vectors: np.ndarray, queries: np.ndarray
) -> None:
    from ebr.index.query.postfilter import postfiltered_search

    half = random_mask(N, N // 3, seed=5)  # a third eligible: the selector's job
    for kind, mask, params, want in (
        ("ivf", half, FORCE["ann"], "ann_filtered"),
        # a small slot minus a few deletes: the index's own search, not an exact scan of
        # every row (the cliff a 20k-job slot with one delete fell off)
        ("ivf", ~random_mask(N, 20, seed=6), None, "ann_postfiltered"),
        ("flat", ~random_mask(N, 20, seed=6), FORCE["ann"], "exact_subset"),
    ):
        scores, rows, plan = postfiltered_search(indexes[kind], vectors, queries, K, mask, params)
        assert plan.strategy == want
        check_invariants(rows, scores, mask, K)


def test_only_frozen_masks_are_memoized(
    indexes: dict[str, Any], vectors: np.ndarray, queries: np.ndarray
) -> None:
    """A writable mask is read afresh on every call: changing it after a search changes the
    next answer. A frozen one (read-only, no writable base) is cached while it lives."""
    from ebr.index.query.masks import cached, frozen, mask_info
    from ebr.index.query.postfilter import postfiltered_search

    index, ann = indexes["ivf"], FORCE["ann"]
    mask = ~random_mask(N, 20, seed=7)
    for search in (filtered_search, postfiltered_search):
        live = mask.copy()
        _, rows, _ = search(index, vectors, queries, K, live, ann)
        assert not cached(live)
        live[rows[:, 0]] = False  # each query's best row is deleted in place
        scores, again, plan = search(index, vectors, queries, K, live, ann)
        assert not np.isin(again, rows[:, 0]).any() and plan.eligible == int(live.sum())
        check_invariants(again, scores, live, K)
    view = mask.view()
    view.flags.writeable = False  # read-only, but its base is not: not frozen
    assert not frozen(view) and mask_info(view) is not mask_info(view)
    still = _frozen(mask)
    filtered_search(index, vectors, queries, K, still, ann)
    assert frozen(still) and cached(still) and mask_info(still) is mask_info(still)
    assert mask_info(still).count == int(mask.sum())


@pytest.mark.parametrize("excluded", [0, 7, 300, 1_900, 3_500])  # in place, gathered, sparse
def test_exact_masked_equals_brute_force_in_every_branch(
    excluded: int, vectors: np.ndarray, queries: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ebr.index.query import exact

    # Small slices, so one scan crosses several and both per-slice branches run.
    monkeypatch.setattr(exact, "EXACT_CHUNK_ROWS", 1_000)
    monkeypatch.setattr(exact, "MAX_SKIPPED", 100)
    mask = ~random_mask(N, excluded, seed=excluded)
    for k in (K, 100):
        scores, rows = exact.exact_masked(vectors, mask, queries, k)
        np.testing.assert_array_equal(rows, truth(vectors, queries, mask, k))
        expected = np.take_along_axis(queries @ vectors.T, rows, axis=1)
        np.testing.assert_allclose(scores, expected, atol=1e-5)
        assert mask[rows].all()
