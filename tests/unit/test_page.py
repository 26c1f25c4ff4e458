"""A served page after retrieval (serving.page) on a real slot: crowding caps hold on the
final page, backfilled from deeper retrievals, so k come back whenever k eligible jobs exist
under the caps (randomised, against brute force over the live view); filters hold; without a
ranker or cap the page is the retrieval's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ebr.config import IndexConfig, Workspace
from ebr.index.build.writer import write_slot
from ebr.index.query.filters import parse_filter
from ebr.index.query.slot import MANIFEST_FILE
from ebr.io import sha256_file
from ebr.release.record import Release
from serving.page import PageOptions, serve_page
from serving.ranking import RankStage
from serving.retriever import ReleaseIndex

N, D = 2500, 16
COMPANIES = np.array([f"co{i}" for i in range(12)])
CITIES = np.array(["Berlin", "Paris", "Rome", "Oslo"])


def _release(ws: Workspace, slot: Path, ranking: dict | None = None) -> Release:
    manifest = json.loads((slot / MANIFEST_FILE).read_text())
    doc = {
        "id": "rel-v1-20261201T000000000000",
        "model": {"version": "v1", "checksums": {}, "model_json_sha256": ""},
        "member_interest": None,
        "features": {"request_service": "r", "item_service": "i", "views": []},
        "slot": {"name": slot.name, "manifest_sha256": sha256_file(slot / MANIFEST_FILE),
                 "model_version": "v1", "item_count": manifest["item_count"],
                 "recall_at_10": manifest["recall_at_10"]},
        "ranking": ranking,
    }  # fmt: skip
    return Release.from_doc(ws, doc)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(5)
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    # One company holds most jobs: an uncapped page is mostly its postings.
    p = np.r_[0.6, np.full(len(COMPANIES) - 1, 0.4 / (len(COMPANIES) - 1))]
    items = pd.DataFrame({
        "job_id": np.arange(1, N + 1), "title": [f"job {i}" for i in range(N)],
        "company": rng.choice(COMPANIES, N, p=p), "industry": "x",
        "city": rng.choice(CITIES, N), "country": rng.choice(["DE", "FR"], N),
        "lat": 50.0, "lon": 10.0, "seniority": rng.choice(["entry", "senior"], N),
        "employment_type": "full_time", "remote": False, "active": True,
        "posted_at": pd.Timestamp("2026-10-01", tz="UTC"),
    })  # fmt: skip
    vecs = rng.normal(size=(N, D)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    slot = write_slot(ws.slots, "jobs-v1-20261201T000000000000", vecs, items, "v1",
                      IndexConfig(kind="ivf", nprobe=8))  # fmt: skip
    release = _release(ws, slot, {"depth": 40})
    index = ReleaseIndex(release, verify=False, refresh_s=0.0)
    return index, RankStage(release, None), items, rng


def _query(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=(1, D)).astype(np.float32)
    return v / np.linalg.norm(v)


def _best_size(items: pd.DataFrame, k: int, cap_c: int | None, cap_t: int | None) -> int:
    """Brute force: the largest page of eligible jobs under the caps (one cap: the sum of
    each group's min(count, cap); both: the max flow source -> company -> city -> sink)."""
    if cap_t is None:
        counts = items["company"].value_counts()
        return min(k, int(np.minimum(counts, cap_c or k).sum()))
    if cap_c is None:
        counts = items["city"].value_counts()
        return min(k, int(np.minimum(counts, cap_t).sum()))
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_flow

    comps, cities = sorted(set(items["company"])), sorted(set(items["city"]))
    cell = items.groupby(["company", "city"]).size()
    s, t = 0, 1 + len(comps) + len(cities)
    edges = [(s, 1 + i, cap_c) for i in range(len(comps))]
    edges += [(1 + len(comps) + j, t, cap_t) for j in range(len(cities))]
    edges += [(1 + comps.index(c), 1 + len(comps) + cities.index(city), int(n))
              for (c, city), n in cell.items()]  # fmt: skip
    rows, cols, caps = (list(x) for x in zip(*edges, strict=True))
    graph = csr_matrix((caps, (rows, cols)), shape=(t + 1, t + 1), dtype=np.int32)
    return min(k, int(maximum_flow(graph, s, t).flow_value))


def test_randomised_caps_hold_and_pages_fill(served) -> None:  # type: ignore[no-untyped-def]
    index, stage, items, rng = served
    violations = short = 0
    rounds_seen = set()
    for trial in range(40):
        k = int(rng.integers(1, 21))
        cap_c = int(rng.integers(1, 4)) if trial % 3 != 1 else None
        cap_t = int(rng.integers(1, 4)) if trial % 3 != 0 else None
        flt_json = None
        eligible = items
        if trial % 2:
            flt_json = {"term": {"seniority": ["senior"]}}
            eligible = items[items["seniority"] == "senior"]
        opts = PageOptions(cap_c, cap_t, int(rng.integers(1, 60)), explain=True)
        flt = None if flt_json is None else parse_filter(flt_json)
        hits, plan = serve_page(index, stage, _Enc(_query(rng)), k, flt, None, "ebr", opts)
        page = pd.DataFrame(hits[0])
        rounds_seen.add(plan["funnel"]["rounds"])
        if len(page):
            assert page["job_id"].isin(eligible["job_id"]).all()
            for col, cap in (("company", cap_c), ("city", cap_t)):
                if cap is not None:
                    violations += int((page[col].value_counts() > cap).sum())
        short += len(page) < _best_size(eligible, k, cap_c, cap_t)
        assert page["job_id"].is_unique if len(page) else True
    assert (violations, short) == (0, 0)
    assert max(rounds_seen) > 1  # shallow retrievals were widened to fill the page


class _Enc:
    """An anonymous request's embedding as the encoder returns it (no member, no heads)."""

    def __init__(self, vec: np.ndarray) -> None:
        self.vec, self.personal, self.place, self.profile = vec, None, None, None
        self.heads, self.query_vec = np.zeros((0, D), np.float32), None


def test_no_cap_no_ranker_is_the_retrieval(served) -> None:  # type: ignore[no-untyped-def]
    index, stage, _, rng = served
    q = _query(rng)
    hits, plan = serve_page(index, stage, _Enc(q), 10, None, None, "ebr", PageOptions())
    direct, _ = index.retrieve(q, 10, None, None, "ebr", False)
    assert [h["job_id"] for h in hits[0]] == [h["job_id"] for h in direct[0]]
    assert "funnel" not in plan
    capped, plan = serve_page(index, stage, _Enc(q), 10, None, None, "ebr",
                              PageOptions(max_per_company=1, explain=True))  # fmt: skip
    got = pd.DataFrame(capped[0])
    assert got["company"].is_unique and len(got) == 10
    assert plan["funnel"]["crowded_out"] > 0  # co0 holds 60%: its extra postings were skipped
    promoted = [h["explain"]["crowding"]["promoted_by"] for h in capped[0]]
    assert max(promoted) > 0 and all(h["explain"]["ranker"] is None for h in capped[0])
    out = plan["crowding"]["crowded_out"]
    assert out and all(o["capped_by"] == ["max_per_company"] for o in out)
    assert set(plan["stages_ms"]) >= {"retrieve", "features", "rank", "crowd"}


def test_release_default_caps_apply(tmp_path: Path, served) -> None:  # type: ignore[no-untyped-def]
    index, _, _, rng = served
    release = _release(Workspace(index.slot.path.parents[1]), index.slot.path,
                       {"depth": 50, "max_per_company": 2})  # fmt: skip
    stage = RankStage(release, None)
    hits, _ = serve_page(index, stage, _Enc(_query(rng)), 12, None, None, "ebr", PageOptions())
    counts = pd.DataFrame(hits[0])["company"].value_counts()
    assert counts.max() <= 2 and len(hits[0]) == 12
    # a request's own cap replaces the release's
    hits, _ = serve_page(index, stage, _Enc(_query(rng)), 12, None, None, "ebr",
                         PageOptions(max_per_company=3))  # fmt: skip
    assert pd.DataFrame(hits[0])["company"].value_counts().max() == 3
