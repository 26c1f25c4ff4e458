"""Index kinds behind one factory, their search knobs, and the tuner's recall gate.

Run: ``pytest -q tests/unit/test_tune.py``
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest

from benchmarks.recall_gate import glove, split
from ebr.config import IndexConfig
from ebr.index.build.faiss_index import (
    ann_recall_at_k,
    build_index,
    held_out_recall,
    held_out_rows,
    recall_on,
    recall_queries,
)
from ebr.index.build.filtered_gate import gate_filters
from ebr.index.build.tune import RecallGateError, check_target_recall, tune
from ebr.index.build.writer import write_slot
from ebr.index.query.params import index_kind, search_params, set_search_params
from ebr.index.query.planner import PlannerParams
from ebr.metrics import drop_own, exact_topk, recall_lower_bound, recall_of

D = 32


def mixture(n: int, d: int, centers: int, spread: float, seed: int) -> np.ndarray:
    """float32 [n, d] unit rows drawn around ``centers`` gaussian centres (clustered data)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + spread * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def small() -> np.ndarray:
    return mixture(5_000, D, 64, 0.3, seed=0)


# 256 clusters of spread 0.25: every kind reaches recall@10 0.95 with room (ivfpq measured
# 0.96-1.0 across nprobe x refine once nprobe >= 2), so the tuner has a real choice to make.
@pytest.fixture(scope="module")
def clustered() -> np.ndarray:
    return mixture(20_000, D, 256, 0.25, seed=1)


def test_hnsw_builds_and_reaches_recall_floor(small: np.ndarray):
    cfg = IndexConfig(kind="hnsw", hnsw_m=16, ef_construction=40, ef_search=48)
    index, info = build_index(small, cfg)
    assert isinstance(index, faiss.IndexHNSWFlat) and index.ntotal == len(small)
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert info["kind"] == "hnsw" and info["factory"] == "HNSW16,Flat"
    assert (info["hnsw_m"], info["ef_construction"], info["ef_search"]) == (16, 40, 48)
    assert info["nlist"] is None and info["refine"] is None
    assert index.hnsw.efConstruction == 40
    # Measured ~0.99; a wrong metric or a broken efSearch drops it far below.
    assert ann_recall_at_k(index, small, n_queries=200, k=10, seed=1) >= 0.9
    scores, _ = index.search(small[:5], 3)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # similarities, best first


def test_small_hnsw_catalogue_degrades_to_flat():
    index, info = build_index(mixture(300, D, 4, 0.3, seed=2), IndexConfig(kind="hnsw"))
    assert info["degraded_to_flat"] and index_kind(index) == "flat"


@pytest.mark.parametrize(
    ("cfg", "params"),
    [
        (IndexConfig(kind="flat"), {}),
        (IndexConfig(kind="ivf", nlist=64), {"nprobe": 7}),
        (IndexConfig(kind="ivfpq", nlist=64, pq_m=8), {"nprobe": 64, "refine": 3}),
        (IndexConfig(kind="ivfpq", nlist=64, pq_m=8, pq_nbits=8), {"nprobe": 5, "refine": 1}),
        (IndexConfig(kind="hnsw", hnsw_m=8, ef_construction=16), {"ef_search": 200}),
    ],
    ids=["flat", "ivf", "ivfpq-4bit", "ivfpq-8bit", "hnsw"],
)
def test_search_params_round_trip(small: np.ndarray, cfg: IndexConfig, params: dict[str, int]):
    index, info = build_index(small, cfg)
    assert index_kind(index) == cfg.kind
    # build_index applied the config's knobs and reports the same ones it set.
    before = search_params(index)
    assert set(before) == set(params)
    assert all(info[k] == v for k, v in before.items())
    set_search_params(index, params)
    assert search_params(index) == params
    # The knobs are part of the index file: a loaded slot searches the way it was tuned.
    loaded = faiss.deserialize_index(faiss.serialize_index(index))
    assert index_kind(loaded) == cfg.kind and search_params(loaded) == params


def test_set_search_params_rejects_bad_knobs(small: np.ndarray):
    index, _ = build_index(small, IndexConfig(kind="ivfpq", nlist=64, pq_m=8, nprobe=4))
    with pytest.raises(ValueError, match=r"no search parameter.*ef_search"):
        set_search_params(index, {"ef_search": 10})
    with pytest.raises(ValueError, match=r"nprobe must be an integer in \[1, 64\], got 65"):
        set_search_params(index, {"nprobe": 65, "refine": 2})
    with pytest.raises(ValueError, match="refine"):
        set_search_params(index, {"refine": 0})
    assert search_params(index) == {"nprobe": 4, "refine": 4}  # a rejected call changes nothing
    flat, _ = build_index(small, IndexConfig(kind="flat"))
    with pytest.raises(ValueError, match=r"flat index has no search parameter.*nprobe"):
        set_search_params(flat, {"nprobe": 1})


def test_index_kind_rejects_foreign_indexes():
    with pytest.raises(ValueError, match="unsupported index type IndexLSH"):
        index_kind(faiss.IndexLSH(D, 16))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kind", "annoy"),
        ("pq_m", -1),
        ("hnsw_m", 1),
        ("ef_construction", 8),  # below hnsw_m=32
        ("ef_search", 0),
        ("target_recall", 0.0),
        ("target_recall", 1.5),
        ("tune_on", "rows"),
    ],
)
def test_config_rejects_bad_index_settings(field: str, value: object):
    with pytest.raises(ValueError, match=field):
        IndexConfig(**{field: value})  # type: ignore[arg-type]


def test_defaults_are_fast_scan_pq_with_refine(small: np.ndarray):
    cfg = IndexConfig()
    assert (cfg.kind, cfg.pq_nbits, cfg.target_recall) == ("ivfpq", 4, 0.95) and cfg.refine > 1
    index, info = build_index(small, replace(cfg, nlist=64))
    # pq_m=0: one 4-bit sub-quantizer per dimension; 8-bit codes get one per two dimensions.
    assert info["factory"] == f"IVF64,PQ{D}x4fs,RFlat" and info["pq_m"] == D
    assert isinstance(faiss.downcast_index(index.base_index), faiss.IndexIVFPQFastScan)
    _, info8 = build_index(small, replace(cfg, nlist=64, pq_nbits=8))
    assert info8["factory"] == f"IVF64,PQ{D // 2},RFlat"


def _assert_cheapest_passing(tuned: dict, target: float) -> None:
    chosen = next(e for e in tuned["sweep"] if e["params"] == tuned["chosen"])
    assert chosen["recall"] == tuned["recall_at_10"] >= tuned["recall_lower_at_10"] >= target
    assert chosen["seconds"] == tuned["seconds"]
    # By the tuner's own cost measurement, everything cheaper misses the target (its lower
    # bound does: a point estimate just above the target is not enough).
    for e in tuned["sweep"]:
        if e["seconds"] < chosen["seconds"]:
            assert e["recall_lower"] < target, e


@pytest.mark.parametrize(
    "cfg",
    [IndexConfig(kind="ivf"), IndexConfig(kind="ivfpq"), IndexConfig(kind="hnsw", hnsw_m=16)],
    ids=["ivf", "ivfpq", "hnsw"],
)
def test_tune_picks_cheapest_setting_meeting_target(clustered: np.ndarray, cfg: IndexConfig):
    index, _ = build_index(clustered, cfg)
    full = tune(index, clustered, cfg, n_queries=300, full_sweep=True)
    assert full["kind"] == cfg.kind and full["target_recall"] == 0.95
    assert search_params(index) == full["chosen"]  # applied to the index
    _assert_cheapest_passing(full, 0.95)
    # The gate's figure is what held_out_recall (the slot manifest's measurement) sees after.
    assert full["source"] == "held-out catalogue rows"
    assert held_out_recall(index, clustered, 300, seed=cfg.seed).mean() == full["recall_at_10"]

    # The gate covers filtered search too: the planner at the chosen setting, three filters.
    assert set(full["filtered_recall_at_10"]) == {"random", "half_space", "clusters"}
    assert min(full["filtered_recall_at_10"].values()) >= 0.95

    pruned = tune(index, clustered, cfg, n_queries=300)  # skips settings that can't be cheapest
    _assert_cheapest_passing(pruned, 0.95)
    assert len(pruned["sweep"]) <= len(full["sweep"])
    json.dumps(pruned)  # manifest-ready


def test_tune_on_given_queries(clustered: np.ndarray):
    # Fresh draws around the catalogue's centres (same seed, rows past the catalogue's) stand
    # in for request embeddings: near the catalogue but not jittered copies of its rows.
    requests = mixture(20_300, D, 256, 0.25, seed=1)[20_000:]
    cfg = IndexConfig(kind="ivf")
    index, _ = build_index(clustered, cfg)
    tuned = tune(index, clustered, cfg, queries=requests)
    assert tuned["n_queries"] == len(requests)
    _, truth = exact_topk(clustered, requests, 10)
    _, found = index.search(requests, 10)
    assert recall_of(found, truth) == tuned["recall_at_10"] >= 0.95
    with pytest.raises(ValueError, match="d=16"):
        tune(index, clustered, cfg, queries=mixture(10, 16, 4, 0.25, seed=0))


def test_tune_flat_has_nothing_to_sweep(small: np.ndarray):
    index, _ = build_index(small, IndexConfig(kind="flat"))
    tuned = tune(index, small, IndexConfig(kind="flat", target_recall=1.0), n_queries=100)
    assert tuned["chosen"] == {} and tuned["recall_at_10"] == 1.0 and len(tuned["sweep"]) == 1


def test_unreachable_target_raises_and_keeps_params(clustered: np.ndarray):
    # Two 4-bit sub-quantizers give 256 distinct codes for 20k vectors: even 16x refine over
    # every cell cannot recover the exact top-10 (best measured ~0.95), let alone 0.999.
    cfg = IndexConfig(kind="ivfpq", nlist=16, nprobe=2, pq_m=2, refine=2, target_recall=0.999)
    index, _ = build_index(clustered, cfg)
    gate = r"target_recall=0\.999: best recall@10 0\.\d+ \(99% lower bound 0\.\d+ over 200 held-out"
    with pytest.raises(RecallGateError, match=gate):
        tune(index, clustered, cfg, n_queries=200)
    try:
        tune(index, clustered, cfg, n_queries=200)
    except RecallGateError as err:
        assert isinstance(err, ValueError) and len(err.sweep) == 5 * 5  # nprobe 1..16 x refine
        best = max(e["recall"] for e in err.sweep)
        assert f"{best:.4f}" in str(err)
    assert search_params(index) == {"nprobe": 2, "refine": 2}  # left as built


def test_gate_filters_follow_the_vectors(clustered: np.ndarray):
    queries = recall_queries(clustered, 300, seed=3, noise=0.1)
    filters = gate_filters(clustered, queries, seed=3)
    best = {}
    for name, (mask, qs) in filters.items():
        assert mask.shape == (len(clustered),) and 0.25 <= mask.mean() <= 0.45, name
        best[name] = (queries[qs] @ clustered[mask].T).max(axis=1).mean()
    # Correlated filters leave each of their queries only rows far from it; a random one doesn't.
    assert best["half_space"] < best["random"] - 0.05 and best["clusters"] < best["random"] - 0.05
    tiny = mixture(3, D, 2, 0.25, seed=0)  # a catalogue of 3 rows still yields filters
    assert all(len(qs) for _, qs in gate_filters(tiny, tiny, seed=3).values())


def test_filtered_gate_refuses_a_planner_that_loses_correlated_rows(clustered: np.ndarray):
    cfg = IndexConfig(kind="ivf")
    index, _ = build_index(clustered, cfg)
    before = search_params(index)
    # The planner without its score margin and page check (the issue's): unfiltered recall
    # passes, the filters correlated with the vectors do not (measured 0.87 / 0.90).
    bare = PlannerParams(margin_quantile=None, check_rows=0)
    with pytest.raises(RecallGateError, match=r"target_recall=0\.95: 'half_space' filter 0\.\d+"):
        tune(index, clustered, cfg, n_queries=300, planner=bare)
    assert search_params(index) == before  # refused: left as it came
    tuned = tune(index, clustered, cfg, n_queries=300)
    assert min(tuned["filtered_recall_at_10"].values()) >= 0.95


def test_tiny_catalogue_passes_the_filtered_gate():
    tiny = mixture(12, D, 3, 0.25, seed=4)
    index, _ = build_index(tiny, IndexConfig(kind="hnsw"))  # degrades to flat: exact scans
    tuned = tune(index, tiny, IndexConfig(kind="hnsw"), n_queries=20)
    assert tuned["filtered_recall_at_10"] == {"random": 1.0, "half_space": 1.0, "clusters": 1.0}


def test_recall_gate():
    check_target_recall(0.95, 0.95)
    with pytest.raises(RecallGateError, match=r"0\.9000 with \{'nprobe': 4\}.*target_recall=0\.95"):
        check_target_recall(0.9, 0.95, {"nprobe": 4})
    with pytest.raises(ValueError, match="target_recall must be in"):
        check_target_recall(0.9, 0.0)


def test_cli_retunes_a_slot_without_changing_it(tmp_path: Path, small: np.ndarray):
    from typer.testing import CliRunner

    from cli.main import app

    cfg = IndexConfig(kind="ivf", nlist=32, nprobe=1, recall_queries=100)
    items = pd.DataFrame({"job_id": np.arange(1, len(small) + 1, dtype=np.int64)})
    slot = write_slot(tmp_path, "s", small, items, "v1", cfg)
    before = {p.relative_to(slot): p.read_bytes() for p in slot.rglob("*") if p.is_file()}
    args = ["slot", "tune", "--slot", str(slot), "--target-recall", "0.9", "--queries", "100"]
    result = CliRunner().invoke(app, [*args, "--full"])
    assert result.exit_code == 0, result.output
    assert "chosen {'nprobe'" in result.output and "<-" in result.output
    assert "nprobe=32" in result.output  # --full: every setting measured
    assert {p.relative_to(slot): p.read_bytes() for p in slot.rglob("*") if p.is_file()} == before


def test_write_slot_refuses_a_slot_below_its_target_recall(clustered: np.ndarray, tmp_path: Path):
    cfg = IndexConfig(kind="ivfpq", nlist=16, nprobe=2, pq_m=2, refine=2, target_recall=0.999)
    items = pd.DataFrame({"job_id": np.arange(1, len(clustered) + 1), "title": "t"})
    with pytest.raises(RecallGateError, match="target_recall=0.999"):
        write_slot(tmp_path, "gated", clustered, items, "v1", cfg)
    assert not any(tmp_path.iterdir())  # refused before anything was written
    ok = write_slot(
        tmp_path, "ok", clustered, items, "v1", replace(cfg, pq_m=16, target_recall=0.9)
    )
    manifest = json.loads((ok / "manifest.json").read_text())
    assert manifest["tuning"]["tuned_recall_at_10"] >= 0.9
    assert manifest["tuning"]["chosen"] == {k: manifest["index"][k] for k in ("nprobe", "refine")}
    filtered = manifest["tuning"]["filtered_recall_at_10"]
    assert set(filtered) == {"random", "half_space", "clusters"} and min(filtered.values()) >= 0.9


def test_write_slot_gates_on_request_embeddings_when_given(clustered: np.ndarray, tmp_path: Path):
    """Request-like queries (off the catalogue: cluster centres mixed, not jittered rows) are
    harder; a gate tuned on them probes at least as many cells as one tuned on rows, and the
    manifest says which queries the reported recall was measured on."""
    cfg = IndexConfig(kind="ivf", nlist=256, nprobe=1, target_recall=0.95)
    items = pd.DataFrame({"job_id": np.arange(1, len(clustered) + 1), "title": "t"})
    rng = np.random.default_rng(5)
    mixed = clustered[rng.integers(0, len(clustered), (400, 3))].sum(axis=1)  # between clusters
    requests = (mixed / np.linalg.norm(mixed, axis=1, keepdims=True)).astype(np.float32)
    rows = write_slot(tmp_path, "rows", clustered, items, "v1", replace(cfg, tune_on="jittered"))
    asked = write_slot(tmp_path, "asked", clustered, items, "v1", cfg, tuning_queries=requests)
    by_rows, by_requests = (json.loads((p / "manifest.json").read_text()) for p in (rows, asked))
    assert by_rows["recall_queries_source"] == "jittered catalogue rows"
    assert by_requests["recall_queries_source"] == "request embeddings"
    assert by_requests["recall_queries"] == 200  # the half the claim is measured on
    assert by_requests["index"]["nprobe"] > by_rows["index"]["nprobe"]
    assert by_requests["tuning"]["tuned_recall_at_10"] >= 0.95
    # What the rows' setting gives on those requests: the gap the request gate closes.
    index = faiss.read_index(str(rows / "index.faiss"))
    _, truth = exact_topk(clustered, requests[1::2], 10)
    assert recall_of(index.search(requests[1::2], 10)[1], truth) < 0.95
    for bad in (requests[:1], requests[:, :8], np.full_like(requests, np.nan)):
        with pytest.raises(ValueError, match="tuning_queries"):
            write_slot(tmp_path, "bad", clustered, items, "v1", cfg, tuning_queries=bad)


def test_drop_own_leaves_each_query_out_of_its_results():
    ids = np.array([[7, 3, 5], [3, 7, 5], [4, 6, 8], [-1, 2, 9]])
    own = np.array([7, 7, 1, 9])
    # Own id first, in the middle, missing (the last id goes), and next to an empty slot.
    assert drop_own(ids, own).tolist() == [[3, 5], [3, 5], [4, 6], [-1, 2]]
    for bad_ids, bad_own in ((ids[:, :1], own), (ids, own[:2]), (ids[0], own)):
        with pytest.raises(ValueError, match=r"ids must be \[q, k \+ 1\]"):
            drop_own(bad_ids, bad_own)


def test_recall_lower_bound_is_the_margin_the_sample_needs():
    rng = np.random.default_rng(0)
    per_query = rng.binomial(10, 0.95, 500) / 10
    lower = recall_lower_bound(per_query)
    se = per_query.std(ddof=1) / np.sqrt(500)
    assert lower == pytest.approx(per_query.mean() - 2.326 * se) and lower < per_query.mean()
    # More queries, a tighter bound; no spread (or one query), no margin.
    assert recall_lower_bound(np.tile(per_query, 4)) > lower
    assert recall_lower_bound(np.ones(50)) == 1.0 and recall_lower_bound(np.array([0.7])) == 0.7
    # Over many samples the bound passes the true mean (0.95) about 1% of the time (5% at
    # z = 1.645, the 95% bound).
    samples = [rng.binomial(10, 0.95, 500) / 10 for _ in range(400)]
    assert np.mean([recall_lower_bound(s) > 0.95 for s in samples]) <= 0.03
    assert 0.02 <= np.mean([recall_lower_bound(s, z=1.645) > 0.95 for s in samples]) <= 0.09
    with pytest.raises(ValueError, match="per_query"):
        recall_lower_bound(np.array([]))


def test_held_out_rows_are_harder_than_jittered_rows():
    """A jittered row finds itself: every top-10 holds one sure hit. Left out (and out of the
    index's training), the same rows are queries not in the catalogue: on real vectors they
    see the recall real held-out queries get, where jittered rows overstate it."""
    catalogue, words = split(glove(20_000), 1_000, seed=0)
    rows = held_out_rows(len(catalogue), 1_000, seed=3)
    index, _ = build_index(catalogue, IndexConfig(kind="ivf", nlist=256, nprobe=2), untrained=rows)
    held = recall_on(index, catalogue, catalogue[rows], own=rows)  # measured 0.678
    jittered = ann_recall_at_k(index, catalogue, 1_000, seed=3)  # 0.716
    served = recall_on(index, catalogue, words)  # 0.676
    assert jittered > served + 0.02 and abs(held - served) < 0.015


def test_default_slot_serves_the_recall_it_claims_on_real_vectors(tmp_path: Path):
    """GloVe words (real vectors: no cluster structure made to order) taken out of the
    catalogue as queries: a slot written with defaults and no request embeddings serves them
    at least the recall its manifest claims."""
    catalogue, words = split(glove(40_000), 2_000, seed=0)
    items = pd.DataFrame({"job_id": np.arange(1, len(catalogue) + 1)})
    slot = write_slot(tmp_path, "glove", catalogue, items, "v1", IndexConfig())
    manifest = json.loads((slot / "manifest.json").read_text())
    assert manifest["recall_queries_source"] == "held-out catalogue rows"
    assert manifest["recall_queries"] == 1000 and manifest["tuning"]["tuning_queries"] == 1000
    claim = manifest["recall_at_10"]
    assert 0.95 <= claim < manifest["recall_at_10_measured"]  # a lower bound, not the estimate
    served = recall_on(faiss.read_index(str(slot / "index.faiss")), catalogue, words)
    assert served >= claim, (served, manifest["tuning"])
