"""The ranking stage's parts without a trained platform: popularity snapshots and their
point-in-time lookup, the feature matrix, graded gains and NDCG, the LightGBM ranker's
artifact (fit, save, checked load)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ebr.config import DataConfig, RankerConfig, Workspace
from ebr.data.marketplace import TITLE_PREFIX, generate_with_truth
from ebr.rank.candidates import Candidates, ItemColumns
from ebr.rank.dataset import RankData
from ebr.rank.features import FEATURES, POPULARITY_FIELDS, Member, RankRequest, feature_matrix
from ebr.rank.gains import Judge, expected_grade, ndcg_at
from ebr.rank.model import MODEL_FILE, Ranker, fit, save_ranker
from ebr.rank.popularity import JOB_FIELDS, WINDOW_DAYS, as_of, popularity_tables

DAY = pd.Timedelta(days=1)
T0 = pd.Timestamp("2026-10-01T00:00:00Z")


def _log(rows: list[tuple[int, float, str]]) -> pd.DataFrame:
    """Impressions (job_id, days after T0, outcome)."""
    return pd.DataFrame({"job_id": [r[0] for r in rows],
                         "ts": [T0 + r[1] * DAY for r in rows],
                         "outcome": [r[2] for r in rows]})  # fmt: skip


def test_popularity_counts_a_trailing_window_and_never_the_future() -> None:
    log = _log([(1, 0.5, "apply"), (1, 1.5, "none"), (1, 2.5, "click"), (2, 0.2, "save"),
                (1, 10.5, "none")])  # fmt: skip
    jobs = pd.DataFrame({"job_id": [1, 2], "company": ["A", "A"]})
    job_t, comp_t = popularity_tables(log, jobs)
    imp, clk, app = JOB_FIELDS

    def at(job: int, day: float) -> dict[str, int]:
        got = as_of(job_t, "job_id", np.array([job]), [T0 + day * DAY])
        return dict(got.iloc[0])

    assert at(1, 0.9) == {imp: 0, clk: 0, app: 0}  # the day's own engagement is not yet counted
    assert at(1, 1.0) == {imp: 1, clk: 1, app: 1}
    assert at(1, 3.0) == {imp: 3, clk: 2, app: 1}
    assert at(1, 1.0 + WINDOW_DAYS) == {imp: 2, clk: 1, app: 0}  # day 0 left the window
    assert at(1, 3.0 + WINDOW_DAYS) == {imp: 0, clk: 0, app: 0}  # a drop to zero is a row
    assert at(2, 1.0)[clk] == 1
    comp = as_of(comp_t, "company", np.array(["A", "B"]), [T0 + 3 * DAY] * 2)
    assert comp.iloc[0].tolist() == [4, 3, 1] and comp.iloc[1].tolist() == [0, 0, 0]
    # only changes are stored: job 1 holds steady on days without traffic
    assert len(job_t[job_t["job_id"] == 1]) < 12


def _cands(n: int) -> Candidates:
    cols = ItemColumns.of(pd.DataFrame({
        "company": ["A"] * n, "city": ["x"] * n, "title": ["Senior data engineer"] * n,
        "skills": [["python", "sql"]] * n, "employment_type": ["full_time"] * n,
        "lat": [52.5] * n, "lon": np.linspace(13.4, 14.4, n), "remote": [False] * n,
        "seniority": ["senior"] * n, "posted_at": [T0] * n,
    }))  # fmt: skip
    nan = np.full(n, np.nan)
    return Candidates(np.arange(1, n + 1), np.linspace(1, 0, n), nan, np.zeros((n, 3)), nan,
                      nan, cols)  # fmt: skip


def test_feature_matrix_member_and_query_sides() -> None:
    cands, pop = _cands(4), np.zeros((4, len(POPULARITY_FIELDS)))
    col = {f: i for i, f in enumerate(FEATURES)}
    anon = feature_matrix(RankRequest("data engineer", None, T0 + 3 * DAY), cands, pop)
    assert anon.shape == (4, len(FEATURES)) and anon.dtype == np.float32
    assert np.isnan(anon[:, col["distance_over_commute"]]).all()
    assert (anon[:, col["title_match"]] == 1.0).all() and (anon[:, col["job_age_days"]] == 3).all()
    assert (anon[:, col["signed_in"]] == 0).all() and (anon[:, col["has_query"]] == 1).all()
    member = Member.of({"lat": 52.5, "lon": 13.4, "max_commute_km": 34.0, "open_to_remote": True,
                        "seniority": "mid", "preferred_employment_type": "part_time",
                        "skills": ["python"], "headline": "Data engineer"})  # fmt: skip
    signed = feature_matrix(RankRequest(None, member, T0), cands, pop)
    ratio = signed[:, col["distance_over_commute"]]
    assert ratio[0] == pytest.approx(0.0) and np.all(np.diff(ratio) > 0)  # further east
    assert (signed[:, col["seniority_gap"]] == 1).all()  # senior job, mid member
    assert (signed[:, col["employment_fit"]] == 0).all()
    assert (signed[:, col["skill_overlap"]] == 0.5).all()
    assert signed[:, col["headline_match"]] == pytest.approx(np.full(4, 2 / 3))
    assert np.isnan(signed[:, col["title_match"]]).all()  # a feed has no query
    with pytest.raises(ValueError, match="popularity"):
        feature_matrix(RankRequest(None, None, T0), cands, np.zeros((3, 6)))


def test_gains_follow_what_was_typed() -> None:
    market, _ = generate_with_truth(DataConfig(n_jobs=600, seed=3))
    jobs, members = market.jobs, market.members
    judge = Judge(jobs, members)
    title = str(jobs["title"].iloc[0])
    prefix = next((p for p in TITLE_PREFIX if p and title.startswith(p)), "")
    label = title[len(prefix) :]
    for query in (label.lower(), " ".join(label.lower().split()[-2:]),
                  str(jobs["skills"].iloc[0][0])):  # fmt: skip
        assert judge.matches(query)[0], query
    assert not judge.matches("zzzz qqqq").any()
    ids = jobs["job_id"].to_numpy()[:200]
    typed, feed = judge.gains(1, ids, label), judge.gains(1, ids, None)
    match = judge.matches(label)[:200]
    assert typed[match & jobs["active"].to_numpy()[:200]].mean() > typed[~match].mean()
    assert (feed >= 0).all() and feed.max() > 0
    assert np.all(np.diff(expected_grade(np.linspace(-3, 6, 20))) > 0)
    with pytest.raises(KeyError, match="member 99999"):
        judge.gains(99999, ids, None)


def test_ndcg() -> None:
    gains = np.array([0.0, 3.0, 1.0])
    assert ndcg_at(gains, np.array([1, 2, 0])) == pytest.approx(1.0)
    assert ndcg_at(gains, np.array([0, 2, 1])) < ndcg_at(gains, np.array([2, 1, 0])) < 1
    assert np.isnan(ndcg_at(np.zeros(3), np.arange(3)))


def _synthetic(rng: np.random.Generator, sessions: int) -> RankData:
    """Sessions of 30 rows whose grade follows feature 'cos_apply', shown at positions."""
    n = sessions * 30
    X = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    rel = X[:, FEATURES.index("cos_apply")]
    label = np.clip(np.floor(rel + rng.normal(scale=0.3, size=n)), 0, 3).astype(int)
    position = np.tile(np.arange(30), sessions)
    session = pd.DataFrame({"session_id": range(sessions), "member_id": 1,
                            "kind": "search", "intent": "profile"})  # fmt: skip
    return RankData(X, label, position, rel, np.tile(np.arange(30), sessions),
                    np.full(sessions, 30), session)  # fmt: skip


def test_ranker_learns_fits_saves_and_refuses_tampering(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    data = _synthetic(rng, 300)
    cfg = RankerConfig(trees=30, min_data_in_leaf=20)
    booster = fit(data, cfg)
    ws = Workspace(tmp_path)
    path = save_ranker(ws, "v3", booster, cfg, {"note": "synthetic"})
    assert path.parent == ws.rankers / "v3" and path.name.startswith("rank-v3-")
    ranker = Ranker.load(path)
    test = _synthetic(rng, 50)
    scores = ranker.score(test.X)
    rel = test.X[:, FEATURES.index("cos_apply")]
    assert np.corrcoef(scores, rel)[0, 1] > 0.8
    contrib = ranker.contributions(test.X[:10])
    assert contrib.shape == (10, len(FEATURES) + 1)
    assert np.allclose(contrib.sum(axis=1), scores[:10], atol=1e-6)
    assert max(ranker.importance(), key=ranker.importance().get) == "cos_apply"
    with pytest.raises(ValueError, match="sha256"):
        Ranker.load(path, model_sha256="0" * 64)
    (path / MODEL_FILE).write_text((path / MODEL_FILE).read_text() + "\n")
    with pytest.raises(ValueError, match="sha256"):
        Ranker.load(path)


def test_query_tiers_put_what_was_typed_first() -> None:
    from ebr.rank.candidates import query_tiers

    coverage = np.array([0.5, 1.0, 0.5, 0.5, np.nan])  # share of the query's terms in the text
    title = np.array([0.0, 0.0, 0.5, 0.49, np.nan])  # ... in the title
    assert query_tiers(coverage, title).tolist() == [1, 0, 0, 1, 1]
    none = np.array([0.4, 0.2])
    assert query_tiers(none, none).tolist() == [0, 0]  # none matches: one tier
    assert query_tiers(np.full(3, np.nan), np.full(3, np.nan)).tolist() == [0, 0, 0]  # a feed
    # ordered by tier, then by the ranker's score (what serving.page does)
    score = np.array([9.0, 1.0, 2.0, 8.0, 7.0])
    order = np.lexsort((-score, query_tiers(coverage, title)))
    assert order.tolist() == [2, 1, 0, 3, 4]
