"""Closed jobs over HTTP: no default request (every retrieval mode, recommendations) returns a
job the catalogue has closed, and a job closed by a streamed record (``active`` false in its
upsert) disappears and comes back when reopened."""

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
from ebr.release.state import live_release

pytestmark = pytest.mark.slow
MODES = ("ebr", "term", "hybrid")
QUERIES = ("accountant", "nurse", "software engineer", "manager", "sales")
WAIT_S = 15.0  # a replica tails the slot's log every refresh_s (well under this)


def _ids(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [h["job_id"] for h in response.json()["results"]]


def test_no_default_request_returns_a_closed_job(api: httpx.Client, platform_ws: Path) -> None:
    jobs = pd.read_parquet(platform_ws / "data" / "jobs.parquet", columns=["job_id", "active"])
    closed = set(jobs.loc[~jobs["active"].astype(bool), "job_id"].tolist())
    assert closed  # the catalogue has closed jobs (about 8%)
    seen: set[int] = set()
    for mode in MODES:
        for query in QUERIES:
            seen |= set(_ids(api.post("/v1/search", json={"query": query, "k": 100,
                                                          "retrieval": mode})))  # fmt: skip
    members = pd.read_parquet(platform_ws / "data" / "members.parquet")["member_id"].head(5)
    for member in members.tolist():
        seen |= set(_ids(api.get(f"/v1/members/{member}/recommendations", params={"k": 100})))
        body = {"member_id": member, "query": "manager", "k": 100}
        seen |= set(_ids(api.post("/v1/search", json=body)))
    assert len(seen) > 200 and not seen & closed


def _search_ids(api: httpx.Client, **body: Any) -> list[int]:
    return _ids(api.post("/v1/search", json={"k": 100, **body}))


def test_a_job_closed_by_its_record_is_hidden_until_reopened(
    api: httpx.Client, platform_ws: Path
) -> None:
    """Two new jobs with a word no other job has, one open and one closed (as a streamed
    update that sets ``active`` false writes it): once the open one is served, the closed
    one is absent from every mode; reopened, it is served."""
    slot_path = live_release(Workspace(platform_ws)).paths.slot
    with open_live(slot_path) as writer:
        snap = writer.snapshot
        rows = snap.items.iloc[[1, 2]].copy().reset_index(drop=True)
        base = int(snap.job_ids.max()) + 5000
        rows["job_id"] = [base, base + 1]
        rows["title"] = ["Vexlorian riveter", "Vexlorian riveter"]
        rows["active"] = [True, False]
        vectors = np.asarray(snap.vectors[[1, 2]])
        writer.upsert(rows, vectors)
        try:
            _wait_for(api, base, "vexlorian")
            for mode in MODES:
                got = _search_ids(api, query="vexlorian riveter", retrieval=mode)
                assert base + 1 not in got, mode
            writer.upsert(rows.iloc[[1]].assign(active=True).reset_index(drop=True), vectors[1:])
            _wait_for(api, base + 1, "vexlorian")
        finally:
            writer.delete([base, base + 1])


def _wait_for(api: httpx.Client, job_id: int, query: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while job_id not in _search_ids(api, query=query, retrieval="term"):
        assert time.monotonic() < deadline, f"job {job_id} not served after {WAIT_S} s"
        time.sleep(0.3)
