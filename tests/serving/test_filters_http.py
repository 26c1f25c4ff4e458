"""Filtered search over HTTP: strict filters during the ANN query, plans, and 422s for bad
filter expressions (naming the problem)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from ebr.config import Workspace
from ebr.data.geo import haversine_km
from ebr.index.query.slot import load_slot
from ebr.release.state import live_release

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def items(platform_ws: Path) -> pd.DataFrame:
    return load_slot(live_release(Workspace(platform_ws)).paths.slot, verify=False).items


def _search(api: httpx.Client, **body: object) -> dict:
    r = api.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _ann_plan(plan: dict) -> dict:
    """The planner's part of a plan: hybrid (the default retrieval) nests it under "ebr"."""
    assert plan["strategy"] == "hybrid" and plan["term"]["strategy"] == "bm25"
    return plan["ebr"]


def test_boolean_filter_is_strict(api: httpx.Client, items: pd.DataFrame) -> None:
    flt = {"and": [{"term": {"seniority": ["senior", "lead"]}}, {"not": {"term": {"remote": True}}},
                   {"term": {"active": True}}]}  # fmt: skip
    doc = _search(api, query="engineer", k=50, filter=flt, explain=True)
    by_id = items.set_index("job_id")
    hits = by_id.loc[[h["job_id"] for h in doc["results"]]]
    assert len(hits) == 50
    assert hits["seniority"].isin(["senior", "lead"]).all()
    assert (~hits["remote"]).all() and hits["active"].all()
    plan = _ann_plan(doc["plan"])
    assert plan["strategy"] in ("ann_filtered", "exact_subset")
    assert plan["eligible"] < len(items) and doc["plan"]["term"]["eligible"] == plan["eligible"]


def test_geo_radius_filter_keeps_only_nearby_jobs(api: httpx.Client, items: pd.DataFrame) -> None:
    city = items["city"].value_counts().index[0]
    lat, lon = items.loc[items["city"] == city, ["lat", "lon"]].iloc[0]
    flt = {"geo_radius": {"lat": float(lat), "lon": float(lon), "km": 100}}
    doc = _search(api, query="manager", k=20, filter=flt)
    hits = items.set_index("job_id").loc[[h["job_id"] for h in doc["results"]]]
    assert len(hits) == 20
    assert (haversine_km(lat, lon, hits["lat"].to_numpy(), hits["lon"].to_numpy()) <= 100).all()


def test_tiny_eligible_set_returns_exactly_it(api: httpx.Client, items: pd.DataFrame) -> None:
    company = items["company"].value_counts().index[-1]  # the rarest company
    expected = set(items.loc[items["company"] == company, "job_id"])
    doc = _search(
        api, query="assistant", k=100, filter={"term": {"company": company}}, explain=True
    )
    assert {h["job_id"] for h in doc["results"]} == expected  # all of them, nothing else
    assert _ann_plan(doc["plan"])["strategy"] == "exact_subset"
    scores = [h["score"] for h in doc["results"]]
    assert scores == sorted(scores, reverse=True)


def test_plan_is_only_returned_when_asked(api: httpx.Client) -> None:
    assert _search(api, query="nurse")["plan"] is None
    plan = _ann_plan(_search(api, query="nurse", explain=True)["plan"])
    assert plan["strategy"] == "ann" and plan["eligible"] == plan["n"]


@pytest.mark.parametrize(
    ("flt", "named"),
    [
        ({"and": []}, "filter.and"),
        ({"term": {"salary": 3}}, "salary"),
        ({"range": {"posted_at": {"gte": "not a date"}}}, "posted_at"),
        ({"geo_radius": {"lat": 95, "lon": 0, "km": 10}}, "lat"),
        ({"geo_radius": {"lat": 0, "lon": 0, "km": -1}}, "km"),
        ({"xor": [{"term": {"remote": True}}]}, "xor"),
        ("remote", "filter"),
    ],
)
def test_bad_filters_are_422_naming_the_problem(api: httpx.Client, flt: object, named: str) -> None:
    r = api.post("/v1/search", json={"query": "nurse", "filter": flt})
    assert r.status_code == 422, r.text
    assert named in r.text


def test_no_result_violates_random_filters(api: httpx.Client, items: pd.DataFrame) -> None:
    rng = np.random.default_rng(5)
    by_id = items.set_index("job_id")
    for _ in range(10):
        industries = rng.choice(items["industry"].unique(), 2, replace=False).tolist()
        flt = {
            "or": [{"term": {"industry": industries}}, {"term": {"employment_type": "contract"}}]
        }
        hits = _search(api, query="technician", k=30, filter=flt)["results"]
        got = by_id.loc[[h["job_id"] for h in hits]]
        ok = got["industry"].isin(industries) | (got["employment_type"] == "contract")
        assert ok.all() and len(got) == 30
