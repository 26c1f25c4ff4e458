"""Marketplace generator: schema, determinism, grounding in real data, learnable signal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ebr.config import DataConfig
from ebr.data.engagement import OUTCOMES
from ebr.data.esco import load_occupations, load_skills, occupation_skill_profiles
from ebr.data.geo import haversine_km
from ebr.data.marketplace import generate, write_marketplace
from ebr.data.pairs import eval_searches, positive_pairs, time_split


@pytest.fixture(scope="module")
def mp():
    return generate(DataConfig(n_jobs=1000, seed=3))


def test_esco_is_read_from_the_installed_package() -> None:
    occ, skills = load_occupations(), load_skills()
    assert len(occ) > 3000 and len(skills) > 13000
    assert "physiotherapist" in set(occ["label"])
    prof = occupation_skill_profiles()
    assert prof.shape == (len(occ), 24) and prof.max() < len(skills)


def test_tables_have_the_documented_columns(mp) -> None:
    assert {
        "job_id",
        "title",
        "description",
        "skills",
        "company",
        "industry",
        "seniority",
        "employment_type",
        "city",
        "lat",
        "lon",
        "remote",
        "posted_at",
        "active",
    } <= set(mp.jobs)
    assert {
        "member_id",
        "headline",
        "skills",
        "seniority",
        "city",
        "lat",
        "lon",
        "open_to_remote",
        "max_commute_km",
        "preferred_employment_type",
    } <= set(mp.members)
    assert {"member_id", "query", "job_id", "position", "outcome", "ts"} <= set(mp.impressions)
    assert mp.jobs["job_id"].is_unique and len(mp.jobs) == 1000
    assert set(mp.impressions["outcome"].unique()) <= set(OUTCOMES)
    assert mp.impressions["job_id"].isin(mp.jobs["job_id"]).all()
    assert mp.impressions["query"].isna().any() and mp.impressions["query"].notna().any()


def test_same_seed_same_tables_other_seed_differs() -> None:
    a, b = generate(DataConfig(n_jobs=300, seed=1)), generate(DataConfig(n_jobs=300, seed=1))
    c = generate(DataConfig(n_jobs=300, seed=2))
    pd.testing.assert_frame_equal(a.impressions, b.impressions)
    pd.testing.assert_frame_equal(a.jobs, b.jobs)
    assert not a.jobs["title"].equals(c.jobs["title"])


def test_engagement_follows_the_hidden_preferences(mp) -> None:
    imp = mp.impressions.merge(mp.members[["member_id", "lat", "lon", "skills"]], on="member_id")
    imp = imp.merge(
        mp.jobs[["job_id", "lat", "lon", "skills", "active"]], on="job_id", suffixes=("_m", "_j")
    )
    engaged = imp["outcome"] != "none"
    dist = haversine_km(imp["lat_m"], imp["lon_m"], imp["lat_j"], imp["lon_j"])
    overlap = [len(set(a) & set(b)) for a, b in zip(imp["skills_m"], imp["skills_j"], strict=True)]
    overlap = np.asarray(overlap)
    # Engaged jobs are closer and share more skills than the ones shown and ignored.
    assert np.median(dist[engaged]) < np.median(dist[~engaged])
    assert overlap[engaged].mean() > 1.3 * overlap[~engaged].mean()
    assert not imp.loc[engaged, "active"].eq(False).any()  # inactive jobs are never engaged
    # Position bias: the top slot is engaged far more than the last one.
    by_pos = engaged.groupby(imp["position"]).mean()
    assert by_pos.iloc[0] > 3 * by_pos.iloc[-1]


def test_time_split_has_no_leakage(mp) -> None:
    train, held = time_split(mp.impressions, eval_days=2)
    assert set(train["session_id"]).isdisjoint(held["session_id"])
    assert train["ts"].min() < held["ts"].min()
    ev = eval_searches(held)
    assert len(ev) > 0 and all(len(p) >= 1 for p in ev["positives"])
    assert positive_pairs(train)["outcome"].isin(["click", "save", "apply"]).all()


def test_write_is_atomic_and_complete(tmp_path) -> None:
    info = write_marketplace(DataConfig(n_jobs=200), tmp_path)
    assert info["jobs"] == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "impressions.parquet",
        "jobs.parquet",
        "members.parquet",
    ]


def test_bad_config_is_rejected_with_the_field_name() -> None:
    with pytest.raises(ValueError, match="n_jobs"):
        DataConfig(n_jobs=3)


def test_oracle_ranks_active_jobs_by_hidden_utility() -> None:
    from ebr.data.engagement import utility
    from ebr.data.marketplace import generate_with_truth
    from ebr.data.oracle import oracle_topk

    market, hidden = generate_with_truth(DataConfig(n_jobs=400, seed=9))
    # Same seed, same tables: the truth comes with exactly the data generate() writes.
    pd.testing.assert_frame_equal(market.impressions, generate(DataConfig(400, seed=9)).impressions)
    top = oracle_topk(hidden, [1, 2], 20)
    assert top.shape == (2, 20) and len(set(top[0])) == 20
    assert hidden.j_active[top - 1].all()  # inactive jobs are never engaged, never ranked
    u = utility(hidden, np.zeros(20, dtype=np.int64), top[0] - 1)
    assert (np.diff(u) <= 1e-12).all()  # descending utility for member 1
    with pytest.raises(ValueError, match="k must be"):
        oracle_topk(hidden, [1], 0)


def test_catalogue_pairs_use_each_jobs_own_words_and_no_reserved_label(mp) -> None:
    from ebr.data.catalogue import KINDS, catalogue_pairs
    from ebr.data.esco_labels import alternative_labels, eval_reserved, label_key

    jobs = mp.jobs
    pairs = catalogue_pairs(jobs, 2000, np.random.default_rng(0))
    assert len(pairs) == 2000 and set(pairs["kind"]) == set(KINDS)
    by_id = jobs.set_index("job_id")
    alt = alternative_labels()
    readable = {
        (uri, label_key(a))
        for uri, a in zip(alt["uri"], alt["alt_label"], strict=True)
        if not eval_reserved(a)
    }
    synonyms = 0
    for q, job_id, kind in pairs.itertuples(index=False):
        job = by_id.loc[job_id]
        if kind == "skill":
            assert q in set(job["skills"])
        elif kind == "synonym" and (job["occupation_uri"], label_key(q)) in readable:
            synonyms += 1  # a training-half alternative label of the job's own occupation
        else:
            assert set(label_key(q).split()) <= set(label_key(job["title"]).split()), (q, kind)
    titles = {label_key(t) for t in jobs["title"]}
    alts = {label_key(a) for a in alternative_labels()["alt_label"] if eval_reserved(a)} - titles
    assert not {label_key(q) for q in pairs["query"]} & alts
    assert len(pairs["job_id"].unique()) > 0.6 * len(jobs)  # the whole catalogue, not a head
    assert synonyms > 0.1 * len(pairs) / len(KINDS)
