"""The ranking stage over HTTP, on the platform build_platform made (its live release pins the
ranker it trained): signed-in searches and feeds are ranked and explained, crowding caps hold
on full pages, filters hold, bad caps are a 422 naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from ebr.config import Workspace
from ebr.rank.features import FEATURES
from ebr.release.state import live_release

pytestmark = pytest.mark.slow


def _search(api: httpx.Client, **body: Any) -> dict[str, Any]:
    r = api.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def queries(platform_ws: Path) -> list[tuple[str, int]]:
    """(query, member) pairs of the log's searches: what members typed."""
    log = pd.read_parquet(Path(platform_ws) / "data" / "impressions.parquet")
    s = log[log["query"].notna()].drop_duplicates("session_id").head(8)
    return list(zip(s["query"].astype(str), s["member_id"].astype(int), strict=True))


def test_the_live_release_pins_a_gated_ranker(platform_ws: Path) -> None:
    release = live_release(Workspace(platform_ws))
    pin = release.ranking.ranker
    assert pin is not None and pin.path.is_dir()
    gate = next(g for g in release.record()["gates"] if g["gate"] == "ranker")
    assert gate["passed"] and gate["value"] >= 1.0


def test_signed_in_search_is_ranked_and_explained(api: httpx.Client, queries) -> None:  # type: ignore[no-untyped-def]
    for query, member in queries[:4]:
        body = _search(api, query=query, member_id=member, k=10, explain=True)
        assert len(body["results"]) == 10
        plan = body["plan"]
        assert plan["ranker"] and plan["funnel"]["ranked"] == plan["funnel"]["retrieved"] >= 10
        assert set(plan["stages_ms"]) >= {"retrieve", "features", "rank", "crowd"}
        _assert_tiered(body["results"], body["corrected_query"] or query)
        for hit in body["results"]:
            ex = hit["explain"]
            assert set(ex) == {"retrieval", "ranker", "crowding"}
            contrib = ex["ranker"]["contributions"]
            assert set(contrib) == {*FEATURES, "base"}
            total = sum(v for v in contrib.values() if v is not None)
            assert total == pytest.approx(hit["score"], abs=1e-3)  # TreeSHAP adds up
            assert ex["retrieval"]["rank"] >= 0 and ex["retrieval"]["bm25"] is not None
    anonymous = _search(api, query=queries[0][0], k=10, explain=True)
    assert anonymous["plan"]["ranker"] is None  # trained on members' sessions: not ranked
    assert all(h["explain"]["ranker"] is None for h in anonymous["results"])


def _matches(hit: dict[str, Any], query: str) -> bool:
    """``ebr.rank.candidates.query_tiers``'s match: half the query's terms in the title, or
    all of them in the job's text."""
    from ebr.text import words

    terms = set(words(query))
    title = len(terms & set(words(hit["title"]))) / max(len(terms), 1)
    return title >= 0.5 or (hit["explain"]["retrieval"]["term_coverage"] or 0) >= 1.0


def _assert_tiered(results: list[dict[str, Any]], query: str) -> None:
    """A ranked search's page: jobs matching what was typed first, each group in the ranker's
    order."""
    tiers = [0 if _matches(h, query) else 1 for h in results]
    if 0 not in tiers:
        tiers = [0] * len(tiers)  # no candidate matched: the ranker's order alone
    assert tiers == sorted(tiers), tiers
    for tier in (0, 1):
        scores = [h["score"] for h, t in zip(results, tiers, strict=True) if t == tier]
        assert scores == sorted(scores, reverse=True)


def test_a_signed_in_search_shows_what_was_typed_before_the_profile(
    api: httpx.Client, platform_ws: Path
) -> None:
    """A member typing another occupation than their own sees jobs of what they typed first,
    however well jobs of their own occupation near home fit them."""
    jobs = pd.read_parquet(Path(platform_ws) / "data" / "jobs.parquet", columns=["title"])
    members = pd.read_parquet(Path(platform_ws) / "data" / "members.parquet",
                              columns=["member_id", "headline"])  # fmt: skip
    titles = jobs["title"].str.replace(r"^(Junior|Senior|Lead|Head) ", "", regex=True)
    for query in titles.str.lower().value_counts().index[:5]:
        other = members[~members["headline"].str.lower().str.contains(query, regex=False)]
        for member in other["member_id"].head(3).astype(int):
            body = _search(api, query=query, member_id=member, k=10, explain=True)
            assert body["plan"]["ranker"], "a signed-in search is ranked"
            _assert_tiered(body["results"], query)
            assert _matches(body["results"][0], query), (query, member, body["results"][0])


def test_crowding_caps_hold_on_full_pages(api: httpx.Client, queries) -> None:  # type: ignore[no-untyped-def]
    for query, member in queries:
        for caps in ({"max_per_company": 1}, {"max_per_city": 2},
                     {"max_per_company": 1, "max_per_city": 1}):  # fmt: skip
            body = _search(api, query=query, member_id=member, k=20, **caps)
            page = pd.DataFrame(body["results"])
            assert len(page) == 20
            if "max_per_company" in caps:
                assert page["company"].value_counts().max() <= caps["max_per_company"]
            if "max_per_city" in caps:
                assert page["city"].value_counts().max() <= caps["max_per_city"]
    query, member = queries[0]
    flt = {"term": {"remote": [True]}}
    body = _search(api, query=query, member_id=member, k=10, filter=flt, max_per_company=1)
    assert body["results"] and all(h["remote"] for h in body["results"])


def test_feeds_are_ranked_and_crowded(api: httpx.Client, queries) -> None:  # type: ignore[no-untyped-def]
    member = queries[0][1]
    r = api.get(f"/v1/members/{member}/recommendations",
                params={"k": 15, "max_per_company": 1, "explain": "true"})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == 15 and body["plan"]["ranker"]
    assert pd.DataFrame(body["results"])["company"].is_unique


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_per_company", 0), ("max_per_company", "2"), ("max_per_city", -1),
     ("max_per_city", 1.5), ("candidates", 0), ("candidates", 5000), ("max_per_company", True)],
)  # fmt: skip
def test_bad_ranking_fields_are_422_naming_them(api: httpx.Client, field: str, value: Any) -> None:
    r = api.post("/v1/search", json={"query": "nurse", "member_id": 1, field: value})
    assert r.status_code == 422, r.text
    assert field in r.json()["message"]


def test_bad_feed_caps_are_422(api: httpx.Client) -> None:
    r = api.get("/v1/members/1/recommendations", params={"max_per_company": 0})
    assert r.status_code == 422 and "max_per_company" in r.text


def test_the_ranker_keeps_what_was_typed(api: httpx.Client, platform_ws: Path) -> None:
    """Ranked signed-in pages of exploring searches (not the profile's occupation) still match
    what was typed (``QueryMatches``: the occupation's jobs, or a skill's): the ranker reorders
    the query's candidates by the member, it does not bring the profile back (issue 21). It
    does trade some matches for fit (var/demo2, held-out exploring searches: 0.88 -> 0.77 of
    the top 10 for adjacent occupations, 0.90 -> 0.83 for career changes), which the
    preference model rewards (NDCG, replayed applies); the floors keep that trade bounded."""
    from ebr.data.replay import QueryMatches

    jobs = pd.read_parquet(Path(platform_ws) / "data" / "jobs.parquet")
    row = pd.Series(range(len(jobs)), index=jobs["job_id"])
    matches = QueryMatches(jobs)
    log = pd.read_parquet(Path(platform_ws) / "data" / "impressions.parquet")
    typed = log[log["query"].notna() & (log["intent"] != "profile")]
    sessions = typed.drop_duplicates("session_id").head(30)
    ranked = plain = 0
    for query, member in zip(sessions["query"], sessions["member_id"], strict=True):
        match = matches(str(query))

        def matching(body: dict[str, Any], match: Any = match) -> int:
            return int(sum(match[row[h["job_id"]]] for h in body["results"]))

        ranked += matching(_search(api, query=query, member_id=int(member), k=10))
        plain += matching(_search(api, query=query, member_id=int(member), k=10, rank=False))
    # The trade varies with each build's ranker (training is not bit-reproducible); a page led
    # by the profile again would match ~0.1 (signed-in p@10 before issue 21: 0.08).
    assert plain > 0 and ranked >= 0.65 * plain and ranked >= 0.5 * 10 * len(sessions), (
        ranked, plain,
    )  # fmt: skip


def test_serving_reads_the_features_training_joins(platform_ws: Path) -> None:
    """What the ranker reads online (one Feast call) is what its training joined offline:
    popularity as of now from the same change logs, the interest run's job embeddings."""
    import numpy as np

    from ebr.rank.popularity import as_of, popularity_tables
    from ebr.versions import interest_paths
    from feature_repo.store import open_store, rank_features

    ws = Workspace(platform_ws)
    jobs = pd.read_parquet(ws.data / "jobs.parquet").sample(150, random_state=0)
    iv = live_release(ws).interest_version
    assert iv is not None
    counts, vecs = rank_features(open_store(ws.feature_repo), jobs["job_id"].tolist(),
                                 jobs["company"].tolist(), iv)  # fmt: skip
    job_t, comp_t = popularity_tables(pd.read_parquet(ws.data / "impressions.parquet"),
                                      pd.read_parquet(ws.data / "jobs.parquet"))  # fmt: skip
    now = [pd.Timestamp.now(tz="UTC")] * len(jobs)
    expected = np.concatenate(
        [
            as_of(job_t, "job_id", jobs["job_id"].to_numpy(), now),
            as_of(comp_t, "company", jobs["company"].to_numpy(), now),
        ],
        axis=1,
    )
    assert (counts == expected).all() and counts[:, 0].sum() > 0
    table = pd.read_parquet(interest_paths(ws, iv).jobs).set_index("job_id")
    assert vecs is not None
    want = np.stack(table.loc[jobs["job_id"], "embedding"].to_numpy())
    assert np.allclose(vecs, want, atol=1e-6)
