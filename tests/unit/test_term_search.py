"""Term and hybrid retrieval over a live slot (LiveSlot.query retrieval="term" | "hybrid"):
the same guarantees as EBR (no ineligible or deleted job; k results whenever k eligible jobs
qualify) and the live log kept current (upserts findable by their words at once)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ebr.config import IndexConfig
from ebr.index.build.writer import write_slot
from ebr.index.live.handover import fold_into_slot
from ebr.index.live.slot import open_live
from ebr.index.query.attributes import AttributeTable
from ebr.index.query.filters import parse_filter
from ebr.index.query.fusion import HYBRID_EBR_WEIGHT, fuse_lists
from ebr.index.query.search import HYBRID_DEPTH
from ebr.index.query.slot import MANIFEST_FILE, load_slot
from ebr.index.query.terms import term_text
from tests.unit.test_search_live import _items as _job_rows
from tests.unit.test_search_live import _unit

N, K = 1500, 10
WORDS = ["nurse", "accountant", "driver", "chef", "welder", "cashier", "electrician"]
LEVELS = ["senior", "junior", "lead", "assistant"]


def _items(ids: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """test_search_live's jobs with words to search: titles, skills and descriptions."""
    n = len(ids)
    return _job_rows(ids, rng).assign(
        title=[f"{rng.choice(LEVELS)} {rng.choice(WORDS)}" for _ in range(n)],
        skills=[list(rng.choice(WORDS, 2)) for _ in range(n)],
        description=[f"we hire a {rng.choice(WORDS)} today" for _ in range(n)],
    )


@pytest.fixture()
def live(tmp_path):
    rng = np.random.default_rng(3)
    items = _items(np.arange(1, N + 1), rng)
    path = write_slot(tmp_path, "s1", _unit(rng, N), items, "v1", IndexConfig(kind="ivf", nprobe=8))
    with open_live(path) as lv:
        yield lv, rng


def _live_items(lv) -> pd.DataFrame:
    snap = lv.snapshot
    _, _, delta = lv.delta()
    kept = snap.items[~lv.deleted_rows()]
    return pd.concat([kept, delta], ignore_index=True)


def _truth(lv, text: str, flt=None) -> dict[int, float]:
    """Brute force: BM25 (snapshot statistics) of every live job passing ``flt``, > 0 only."""
    items = _live_items(lv)
    scores = lv.snapshot.terms.score_texts(text, term_text(items))
    ok = scores > 0
    if flt is not None:
        ok &= AttributeTable.from_items(items).mask(flt)
    return dict(zip(items["job_id"][ok].tolist(), scores[ok].tolist(), strict=True))


def _churn(lv, rng) -> np.ndarray:
    """Delete 300 snapshot jobs, upsert 100 new ones and re-title 50 old ones."""
    lv.delete(lv.snapshot.job_ids[:300])
    new = _items(np.arange(N + 1, N + 101), rng)
    lv.upsert(new, _unit(rng, len(new)))
    changed = lv.snapshot.items.iloc[400:450].copy()
    changed["title"] = "zookeeper"
    lv.upsert(changed.reset_index(drop=True), _unit(rng, 50))
    return lv.snapshot.job_ids[:300]


@pytest.mark.parametrize(
    "flt",
    [
        None,
        {"term": {"seniority": "senior"}},
        {"and": [{"term": {"active": True}}, {"term": {"country": "DE"}}]},
    ],
)
@pytest.mark.parametrize("text", ["nurse", "senior chef", "Electrician WELDER", "zookeeper"])
def test_term_search_is_exact_bm25_over_the_live_view(live, flt, text) -> None:
    lv, rng = live
    deleted = _churn(lv, rng)
    f = parse_filter(flt) if flt is not None else None
    hits = lv.query(None, K, f, texts=[text], retrieval="term")
    truth = _truth(lv, text, f)
    got = hits.job_ids[0][hits.job_ids[0] >= 0]
    assert not np.isin(got, deleted).any()
    assert set(got.tolist()) <= set(truth)  # every result is live, eligible, shares a term
    assert len(got) == min(K, len(truth))  # k whenever k eligible jobs share a term
    best = sorted(truth.values(), reverse=True)[: len(got)]
    np.testing.assert_allclose(hits.scores[0][: len(got)], best, rtol=1e-5)
    assert hits.plan["strategy"] == "bm25"


def test_upserts_and_deletes_change_term_results_at_once(live) -> None:
    lv, rng = live
    new = _items(np.array([N + 500]), rng)
    new["title"] = "Zoo keeper"
    lv.upsert(new, _unit(rng, 1))
    hits = lv.query(None, 5, texts=["zoo keeper"], retrieval="term")
    assert hits.job_ids[0].tolist()[0] == N + 500
    assert hits.delta_items["job_id"].tolist() == [N + 500]  # display rows come along
    assert hits.plan["coverage"] == [1.0]  # 'zoo', 'keeper': known from the live delta
    lv.delete([N + 500])
    assert (lv.query(None, 5, texts=["zoo keeper"], retrieval="term").job_ids == -1).all()
    # Re-titled: the old words no longer find the job, the new ones do.
    row = lv.snapshot.items.iloc[[0]].copy()
    old_word = row["title"].iloc[0].split()[-1]
    row["title"], row["skills"], row["description"] = "Beekeeper", [["bees"]], "honey"
    lv.upsert(row.reset_index(drop=True), _unit(rng, 1))
    jid = int(row["job_id"].iloc[0])
    assert jid in lv.query(None, K, texts=["beekeeper"], retrieval="term").job_ids
    assert jid not in lv.query(None, N, texts=[old_word], retrieval="term").job_ids


@pytest.mark.parametrize("text", ["nurse", "qqqq unknown words", ""])
def test_hybrid_fills_k_with_eligible_jobs_even_without_a_shared_term(live, text) -> None:
    lv, rng = live
    deleted = _churn(lv, rng)
    f = parse_filter({"term": {"seniority": "senior"}})
    q = _unit(rng, 1)
    hits = lv.query(q, K, f, texts=[text], retrieval="hybrid")
    items = _live_items(lv)
    eligible = set(items["job_id"][AttributeTable.from_items(items).mask(f)].tolist())
    got = hits.job_ids[0]
    assert (got >= 0).all() and set(got.tolist()) <= eligible
    assert not np.isin(got, deleted).any()
    # The fusion of the two filtered live lists, each HYBRID_DEPTH deep.
    ebr = lv.query(q, HYBRID_DEPTH, f)
    term = lv.query(None, HYBRID_DEPTH, f, texts=[text], retrieval="term")
    lists, scores = [ebr.job_ids, term.job_ids], [ebr.scores, term.scores]
    weights = [HYBRID_EBR_WEIGHT, 1 - HYBRID_EBR_WEIGHT]
    rows = [None, np.array(term.plan["coverage"])]
    scales = [None, np.array(term.plan["attainable"])]
    fused = fuse_lists(lists, scores, weights, K, row_weights=rows, scales=scales)[1]
    assert got.tolist() == fused[0].tolist()
    if term.job_ids[0, 0] < 0:  # no shared term: the fusion is the EBR list itself
        assert got.tolist() == ebr.job_ids[0, :K].tolist()
    assert hits.plan["strategy"] == "hybrid" and np.all(np.diff(hits.scores[0]) <= 0)


def test_compaction_rebuilds_the_term_index_over_the_live_view(live, tmp_path) -> None:
    lv, rng = live
    _churn(lv, rng)
    before = lv.query(None, K, texts=["zookeeper"], retrieval="term").job_ids
    path = fold_into_slot(lv, lv.snapshot.path.parent, "s2", IndexConfig(kind="ivf", nprobe=8))
    with open_live(path) as lv2:
        after = lv2.query(None, K, texts=["zookeeper"], retrieval="term").job_ids
        assert set(after[0].tolist()) == set(before[0].tolist())
        assert lv2.snapshot.terms.n_docs == len(lv2.snapshot.items)


def test_bad_term_requests_are_refused_with_a_reason(live) -> None:
    lv, rng = live
    with pytest.raises(ValueError, match="retrieval must be one of"):
        lv.query(_unit(rng, 1), K, retrieval="bm25")
    with pytest.raises(ValueError, match="need the query texts"):
        lv.query(None, K, retrieval="term")
    with pytest.raises(ValueError, match="2 query texts for 1 query vectors"):
        lv.query(_unit(rng, 1), K, texts=["a", "b"], retrieval="hybrid")
    with pytest.raises(ValueError, match="needs the query vectors"):
        lv.query(None, K, texts=["nurse"], retrieval="hybrid")


def test_term_index_is_checksummed_and_older_slots_say_they_have_none(live) -> None:
    lv, _ = live
    path = lv.snapshot.path
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert any(f.startswith("terms/") for f in manifest["checksums"])
    old = dict(manifest)
    old.pop("terms")
    old["checksums"] = {k: v for k, v in manifest["checksums"].items() if "/" not in k}
    (path / MANIFEST_FILE).write_text(json.dumps(old))
    with open_live(path, writable=False) as older:
        with pytest.raises(ValueError, match="no term index"):
            older.query(None, K, texts=["nurse"], retrieval="term")
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    victim = next(p for p in (path / "terms").iterdir() if p.suffix == ".npy")
    data = victim.read_bytes()
    victim.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_slot(path)


def test_hybrid_weight_runs_from_term_alone_to_ebr_alone(live) -> None:
    lv, rng = live
    q = _unit(rng, 1)
    ebr = lv.query(q, K).job_ids
    term = lv.query(None, K, texts=["senior nurse"], retrieval="term").job_ids
    only_ebr = lv.query(q, K, texts=["senior nurse"], retrieval="hybrid", ebr_weight=1.0)
    only_term = lv.query(q, K, texts=["senior nurse"], retrieval="hybrid", ebr_weight=0.0)
    assert only_ebr.job_ids.tolist() == ebr.tolist() and only_ebr.plan["ebr_weight"] == 1.0
    assert only_term.job_ids.tolist() == term.tolist()
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="ebr_weight must be in"):
            lv.query(q, K, texts=["nurse"], retrieval="hybrid", ebr_weight=bad)
