"""A closed job (``active`` false) is never served: in every retrieval mode (ebr, term, hybrid;
recommendations are ebr without text), filter or not, whether a slot holds it (one built
before slots left closed jobs out) or a streamed record closes it; slots built from the
catalogue hold exactly its open jobs, and the coverage gate checks what a slot serves."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.query_overhead import items_for
from ebr.config import GateConfig, IndexConfig, Workspace
from ebr.index.build.writer import write_slot
from ebr.index.live.slot import open_live
from ebr.index.query.filters import parse_filter
from ebr.index.query.search import RETRIEVALS
from ebr.release.gates import coverage_gate
from ebr.release.slots import build_job_slot
from ebr.stream.catalog import write_snapshot
from ebr.versions import version_paths

N, D, K = 600, 16, 10
WORD = "welder"  # in every job's title: term retrieval can rank all of them
FILTERS = [None, {"term": {"remote": True}}, {"term": {"seniority": ["senior", "mid"]}}]


def jobs(n: int = N) -> pd.DataFrame:
    """Catalogue rows with every slot column; about 10% closed (``items_for``)."""
    out = items_for(n)
    out["title"] = [f"{WORD} {t}" for t in out["title"]]
    out["skills"] = [["welding", f"skill{i % 7}"] for i in range(n)]
    out["description"] = [f"{WORD} wanted, shift {i % 3}" for i in range(n)]
    return out


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, D)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def slot_with_closed(tmp_path: Path):  # noqa: ANN201 (a generator fixture)
    """A flat slot (exact search) that holds closed jobs, as slots built before did."""
    rng = np.random.default_rng(0)
    items, vecs = jobs(), unit(rng, N)
    path = write_slot(tmp_path, "old", vecs, items, "v1", IndexConfig(kind="flat"))
    with open_live(path) as live:
        yield live, items, vecs, rng


def search(live, q: np.ndarray, mode: str, flt: dict | None, k: int = K) -> np.ndarray:  # noqa: ANN001
    texts = [WORD] * len(q) if mode != "ebr" else None
    hits = live.query(
        q if mode != "term" else None, k, parse_filter(flt) if flt else None, texts=texts,
        retrieval=mode,
    )  # fmt: skip
    return hits.job_ids


@pytest.mark.parametrize("flt", FILTERS, ids=["none", "remote", "seniority"])
@pytest.mark.parametrize("mode", RETRIEVALS)
def test_no_mode_returns_a_closed_job_of_the_slot(slot_with_closed, mode: str, flt) -> None:  # noqa: ANN001
    live, items, vecs, rng = slot_with_closed
    closed = set(items.loc[~items["active"], "job_id"].tolist())
    assert len(closed) > 30  # the slot really holds closed jobs
    q = unit(rng, 20)
    got = search(live, q, mode, flt)
    assert not closed & set(got.ravel().tolist())
    assert (got >= 0).all()  # k open jobs remain for every query
    if mode == "ebr":  # exact: the same as searching the open jobs alone
        keep = items["active"].to_numpy().copy()
        if flt is not None:
            from ebr.index.query.attributes import AttributeTable

            keep &= AttributeTable.from_items(items).mask(parse_filter(flt))
        ids = items["job_id"].to_numpy()[keep]
        exact = ids[np.argsort(-(q @ vecs[keep].T), axis=1)[:, :K]]
        np.testing.assert_array_equal(got, exact)


@pytest.mark.parametrize("mode", RETRIEVALS)
def test_asking_for_closed_jobs_finds_none(slot_with_closed, mode: str) -> None:  # noqa: ANN001
    live, _, _, rng = slot_with_closed
    got = search(live, unit(rng, 5), mode, {"term": {"active": False}})
    assert (got == -1).all()


@pytest.mark.parametrize("mode", RETRIEVALS)
def test_a_streamed_record_closes_and_reopens_a_job(slot_with_closed, mode: str) -> None:  # noqa: ANN001
    """An update whose record says ``active`` false hides the job at once (as a tombstone
    does); the update that reopens it brings it back; a new job posted closed never shows."""
    live, items, vecs, _ = slot_with_closed
    row = int(np.flatnonzero(items["active"].to_numpy())[0])
    job_id, q = int(items["job_id"].iloc[row]), vecs[[row]]  # the job is its own best match
    assert job_id in search(live, q, mode, None, k=N).ravel()
    record = items.iloc[[row]].reset_index(drop=True)
    live.upsert(record.assign(active=False), q)
    newcomer = record.assign(job_id=10**6, active=False)
    live.upsert(newcomer, q)
    got = set(search(live, q, mode, None, k=N).ravel().tolist())
    assert job_id not in got and 10**6 not in got
    every = {"term": {"seniority": ["entry", "mid", "senior"]}}
    assert job_id not in set(search(live, q, mode, every, k=N).ravel().tolist())
    live.upsert(record, q)  # reopened
    assert job_id in search(live, q, mode, None, k=N).ravel()
    if mode == "ebr":
        assert search(live, q, mode, None)[0, 0] == job_id


def catalogue(ws: Workspace, version: str = "v1") -> pd.DataFrame:
    """data/jobs.parquet and ``version``'s job embeddings for every catalogue job."""
    table = jobs()
    ws.data.mkdir(parents=True, exist_ok=True)
    table.to_parquet(ws.data / "jobs.parquet")
    paths = version_paths(ws, version)
    paths.embeddings.mkdir(parents=True, exist_ok=True)
    vecs = unit(np.random.default_rng(1), len(table))
    frame = {"job_id": table["job_id"], "embedding": list(vecs), "model_version": version}
    pd.DataFrame(frame).to_parquet(paths.jobs)
    return table


def test_a_slot_built_from_the_catalogue_holds_its_open_jobs(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    table = catalogue(ws)
    open_ids = set(table.loc[table["active"], "job_id"].tolist())
    built = build_job_slot(ws, "v1", IndexConfig(kind="flat"))
    assert built["closed_jobs"] == N - len(open_ids) > 0 and built["item_count"] == len(open_ids)
    with open_live(Path(built["path"]), writable=False) as live:
        assert set(live.snapshot.job_ids.tolist()) == open_ids
        assert live.snapshot.terms is not None and live.snapshot.terms.n_docs == len(open_ids)
        assert live.snapshot.open_rows is None  # nothing to hide at query time
    gate = coverage_gate(ws, Path(built["path"]), GateConfig())
    assert gate.passed and gate.value == 1.0
    assert f"the slot serves {len(open_ids)} jobs" in gate.detail
    # The stream closes one open job and reopens a closed one (the last compaction's
    # catalogue): the next build follows it, and the older slot no longer passes the gate.
    shut, reopened = min(open_ids), int(table.loc[~table["active"], "job_id"].iloc[0])
    now = datetime.now(UTC).isoformat()
    row = table.loc[table["job_id"] == reopened]
    record = json.loads(row.to_json(orient="records", date_format="iso"))[0] | {"active": True}
    write_snapshot(ws, "jobs", {
        shut: {"kind": "job_closed", "event_time": now, "record": None},
        reopened: {"kind": "job_updated", "event_time": now, "record": record},
    })  # fmt: skip
    stale = coverage_gate(ws, Path(built["path"]), GateConfig())
    assert not stale.passed and f"1 of them closed in the catalogue (e.g. [{shut}])" in stale.detail
    assert "1 missing" in stale.detail  # the reopened job
    again = build_job_slot(ws, "v1", IndexConfig(kind="flat"))
    with open_live(Path(again["path"]), writable=False) as live:
        assert set(live.snapshot.job_ids.tolist()) == (open_ids - {shut}) | {reopened}
    assert coverage_gate(ws, Path(again["path"]), GateConfig()).passed


def test_the_gate_counts_what_a_slot_serves_not_what_it_holds(tmp_path: Path) -> None:
    """A slot holding the catalogue's closed jobs as closed rows serves exactly the open ones
    (passes); one that lists a closed job as open would serve it (refused)."""
    ws = Workspace(tmp_path)
    table = catalogue(ws)
    vecs = unit(np.random.default_rng(2), len(table))
    held = write_slot(ws.slots, "held", vecs, table, "v1", IndexConfig(kind="flat"))
    gate = coverage_gate(ws, held, GateConfig())
    assert gate.passed and f"serves {int(table['active'].sum())} jobs" in gate.detail
    wrong = table.assign(active=True)
    served = write_slot(ws.slots, "served", vecs, wrong, "v1", IndexConfig(kind="flat"))
    refused = coverage_gate(ws, served, GateConfig(min_coverage=0.5))
    assert not refused.passed and "closed in the catalogue" in refused.detail
