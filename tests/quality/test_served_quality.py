"""End-to-end quality floor: the served EBR results beat BM25 term retrieval on held-out searches.

Both numbers are printed (run with -s to see them) and asserted.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pandas as pd
import pytest

from ebr.config import TrainConfig
from ebr.data.pairs import eval_searches, time_split
from ebr.eval.bm25 import BM25Baseline
from ebr.metrics import recall_at_k

K = 100

pytestmark = pytest.mark.slow  # the whole platform, built and served


def test_served_ebr_beats_bm25_on_held_out_searches(platform_ws: Path, api: httpx.Client) -> None:
    jobs = pd.read_parquet(platform_ws / "data" / "jobs.parquet")
    impressions = pd.read_parquet(platform_ws / "data" / "impressions.parquet")
    _, held = time_split(impressions, TrainConfig().eval_days)  # the days training never saw
    ev = eval_searches(held, with_query=True)
    assert len(ev) >= 100, f"too few held-out searches to compare: {len(ev)}"

    served = []
    for query, member_id in zip(ev["query"], ev["member_id"], strict=True):
        r = api.post("/v1/search", json={"query": query, "member_id": int(member_id), "k": K})
        assert r.status_code == 200, r.text
        ids = [h["job_id"] for h in r.json()["results"]]
        served.append(ids + [-1] * (K - len(ids)))
    ebr = recall_at_k(pd.DataFrame(served).to_numpy(), ev["positives"].tolist(), K)
    bm25 = recall_at_k(
        BM25Baseline(jobs).search(ev["query"].tolist(), K), ev["positives"].tolist(), K
    )
    print(f"\nrecall@{K} on {len(ev)} held-out searches: served EBR {ebr:.3f} vs BM25 {bm25:.3f}")
    assert ebr > bm25, f"EBR recall@{K} {ebr:.3f} does not beat BM25 {bm25:.3f}"
    assert ebr > 0.5, f"EBR recall@{K} {ebr:.3f} is below the 0.5 floor"
