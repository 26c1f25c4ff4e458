"""``/v1/search`` retrieval modes over HTTP: ebr, term (BM25 over the slot's job text) and
hybrid (the default), each with the filter guarantees, and term search kept current by the
live log."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from ebr.config import Workspace
from ebr.index.live.slot import open_live
from ebr.index.query.slot import load_slot
from ebr.index.query.terms import tokens
from ebr.release.state import live_release
from serving.schemas import AppArgs

pytestmark = pytest.mark.slow
MODES = ("ebr", "term", "hybrid")


@pytest.fixture(scope="module")
def items(platform_ws: Path) -> pd.DataFrame:
    return load_slot(live_release(Workspace(platform_ws)).paths.slot, verify=False).items


def _search(api: httpx.Client, **body: Any) -> dict[str, Any]:
    r = api.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _text_of(row: pd.Series) -> set[str]:
    skills = " ".join(row["skills"]) if row["skills"] is not None else ""
    return set(tokens(f"{row['title']} {skills} {row['description'] or ''}"))


def test_default_is_hybrid_and_every_mode_answers(api: httpx.Client) -> None:
    assert AppArgs(workspace=".").retrieval == "hybrid"
    assert _search(api, query="nurse", k=5)["retrieval"] == "hybrid"
    for mode in MODES:
        body = _search(api, query="software engineer", k=7, retrieval=mode, explain=True)
        assert body["retrieval"] == mode and len(body["results"]) == 7
        scores = [h["score"] for h in body["results"]]
        assert scores == sorted(scores, reverse=True)
        assert body["plan"]["strategy"] == {"term": "bm25", "hybrid": "hybrid"}.get(
            mode, body["plan"]["strategy"]
        )


def test_term_results_share_a_query_term(api: httpx.Client, items: pd.DataFrame) -> None:
    by_id = items.set_index("job_id")
    common = items["title"].value_counts().index[:3].tolist()
    for query in [*common, common[0].split()[-1], f"{common[1]} zzqx"]:
        body = _search(api, query=query, k=10, retrieval="term")
        assert body["results"], query
        for hit in body["results"]:
            assert set(tokens(query)) & _text_of(by_id.loc[hit["job_id"]]), (query, hit)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "flt",
    [
        {"term": {"remote": True}},
        {"and": [{"term": {"seniority": ["senior", "lead"]}}, {"term": {"active": True}}]},
    ],
)
def test_filters_hold_in_every_mode(
    api: httpx.Client, items: pd.DataFrame, mode: str, flt: dict[str, Any]
) -> None:
    from ebr.index.query.attributes import AttributeTable
    from ebr.index.query.filters import parse_filter

    eligible = set(items["job_id"][AttributeTable.from_items(items).mask(parse_filter(flt))])
    body = _search(api, query="manager", k=20, filter=flt, retrieval=mode)
    got = [h["job_id"] for h in body["results"]]
    assert set(got) <= eligible
    if mode != "term":  # term: only jobs sharing a term; ebr and hybrid fill k
        assert len(got) == min(20, len(eligible))


@pytest.mark.parametrize("mode", ["ebr", "term", "hybrid"])
def test_signed_in_search_keeps_the_query_and_reorders_by_member(
    api: httpx.Client, platform_ws: Path, mode: str
) -> None:
    """A signed-in search keeps what was typed: its retrieval's page (``rank: false``, the
    release's ranker aside: tests/serving/test_ranking_http.py) comes from the query's own
    candidates (PERSONAL_DEPTH deep), almost all within the query's anonymous top 100,
    reordered by the member; members see different orders."""
    from ebr.index.query.fusion import (
        GEO_WEIGHT,
        HYBRID_EBR_WEIGHT,
        PERSONAL_DEPTH,
        PERSONAL_WEIGHT,
    )

    members = pd.read_parquet(platform_ws / "data" / "members.parquet")["member_id"]
    anonymous = _search(api, query="manager", k=100, retrieval=mode)
    found = {h["job_id"] for h in anonymous["results"]}
    orders, inside, total = set(), 0, 0
    for member in members.iloc[:4].astype(int):
        body = _search(api, query="manager", member_id=member, k=10, retrieval=mode,
                       explain=True, rank=False)  # fmt: skip
        got = [h["job_id"] for h in body["results"]]
        assert len(got) == 10 or (mode == "term" and set(got) == found)
        inside, total = inside + len(set(got) & found), total + len(got)
        assert body["plan"]["personal_weight"] == PERSONAL_WEIGHT
        assert body["plan"]["geo_weight"] == GEO_WEIGHT  # the profile's home decays by distance
        assert len(got) <= body["plan"]["candidates"] <= PERSONAL_DEPTH
        if mode == "hybrid":  # the query-led lists are the anonymous ones
            assert body["plan"]["ebr_weight"] == HYBRID_EBR_WEIGHT
        orders.add(tuple(got))
    # The member reorders what the query found (a member-led list would leave the query's).
    assert inside >= 0.8 * total, (inside, total)
    assert len(orders) > 1  # members see different orders: personalisation shows


def test_member_alone_when_the_query_is_not_understood(
    api: httpx.Client, platform_ws: Path
) -> None:
    from ebr.index.query.fusion import HYBRID_EBR_WEIGHT_MEMBER

    member = int(pd.read_parquet(platform_ws / "data" / "members.parquet")["member_id"].iloc[0])
    body = _search(api, query="🚀🚀", member_id=member, k=5, explain=True)
    assert body["query_understood"] is False and len(body["results"]) == 5
    assert "personal_weight" not in body["plan"]
    if body["retrieval"] == "hybrid":
        assert body["plan"]["ebr_weight"] == HYBRID_EBR_WEIGHT_MEMBER


def test_member_only_search_falls_back_to_ebr(api: httpx.Client, platform_ws: Path) -> None:
    member = int(pd.read_parquet(platform_ws / "data" / "members.parquet")["member_id"].iloc[0])
    body = _search(api, member_id=member, k=5, retrieval="term")
    assert body["retrieval"] == "ebr" and len(body["results"]) == 5


def test_bad_retrieval_is_422_naming_it(api: httpx.Client) -> None:
    for value in ("bm25", "", 3, None):
        r = api.post("/v1/search", json={"query": "nurse", "retrieval": value})
        if value is None:
            assert r.status_code == 200
            continue
        assert r.status_code == 422, r.text
        assert "retrieval" in r.json()["message"]


def test_a_new_word_upserted_live_is_found_by_term_and_hybrid(
    api: httpx.Client, platform_ws: Path
) -> None:
    """A word the model never saw (not understood) still finds a job upserted with it."""
    slot_path = live_release(Workspace(platform_ws)).paths.slot
    with open_live(slot_path) as writer:
        snap = writer.snapshot
        row = snap.items.iloc[[1]].copy()
        new_id = int(snap.job_ids.max()) + 1000
        row["job_id"], row["title"] = new_id, "Quizzaciously zymurgist"
        writer.upsert(row.reset_index(drop=True), np.asarray(snap.vectors[[1]]))
        try:
            deadline = time.monotonic() + 15
            body: dict[str, Any] = {}
            while time.monotonic() < deadline:
                body = _search(api, query="zymurgist", k=3)
                if body["results"] and body["results"][0]["job_id"] == new_id:
                    break
                time.sleep(0.3)
            assert body["results"][0]["job_id"] == new_id, body
            assert body["query_understood"] is False and body["retrieval"] == "term"
            assert "term matches alone" in body["notice"]
            term = _search(api, query="zymurgist brewer", k=3, retrieval="term")
            assert term["results"][0]["title"] == "Quizzaciously zymurgist"
        finally:
            writer.delete([new_id])
