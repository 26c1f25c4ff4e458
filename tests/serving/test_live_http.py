"""Live slot behind HTTP: a writer process appends upserts/deletes to the slot's log and the
serving retriever applies them at query time (no rebuild, no redeploy)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from ebr.config import Workspace
from ebr.index.live.slot import open_live
from ebr.release.state import live_release

pytestmark = pytest.mark.slow
COMPANY = "Zeta Live Test Co"


def _ids_for_company(api: httpx.Client, query: str) -> set[int]:
    body = {"query": query, "k": 10, "filter": {"term": {"company": COMPANY}}}
    r = api.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    return {h["job_id"] for h in r.json()["results"]}


def _wait_for(cond, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.3)
    return False


def test_upsert_then_delete_are_visible_to_queries(api: httpx.Client, platform_ws: Path) -> None:
    slot_path = live_release(Workspace(platform_ws)).paths.slot
    with open_live(slot_path) as writer:  # the writer process's view (single-writer lock)
        snap = writer.snapshot
        row = snap.items.iloc[[0]].copy()
        new_id = int(snap.job_ids.max()) + 1
        row["job_id"], row["company"], row["title"] = new_id, COMPANY, "Live test engineer"
        writer.upsert(row.reset_index(drop=True), np.asarray(snap.vectors[[0]]))
        assert _wait_for(lambda: _ids_for_company(api, "engineer") == {new_id})
        hit = api.post(
            "/v1/search",
            json={"query": "engineer", "k": 1, "filter": {"term": {"company": COMPANY}}},
        ).json()
        assert hit["results"][0]["title"] == "Live test engineer"  # display row from the delta
        writer.delete([new_id])
        assert _wait_for(lambda: _ids_for_company(api, "engineer") == set())
