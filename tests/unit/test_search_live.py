"""LiveSlot.query: filters, tombstones and upserts combine without ever leaking an ineligible or
deleted job, and k results come back whenever k live jobs pass the filter."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ebr.config import IndexConfig
from ebr.index.build.writer import write_slot
from ebr.index.live.slot import open_live
from ebr.index.query.attributes import AttributeTable
from ebr.index.query.filters import parse_filter

N, D = 3000, 16


def _items(ids: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame(
        {
            "job_id": ids.astype(np.int64),
            "title": [f"job {i}" for i in ids],
            "company": rng.choice(["a", "b", "c"], n),
            "industry": rng.choice(["x", "y"], n),
            "city": "c",
            "country": rng.choice(["US", "DE"], n),
            "lat": rng.uniform(-60, 60, n),
            "lon": rng.uniform(-180, 180, n),
            "seniority": rng.choice(["entry", "senior"], n),
            "employment_type": "full_time",
            "remote": rng.random(n) < 0.2,
            # Open jobs, as in slots built from the catalogue; a closed job is never served
            # (tests/unit/test_closed_jobs.py).
            "active": np.ones(n, dtype=bool),
            "posted_at": pd.Timestamp("2026-10-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 30 * 86400, n), unit="s"),
        }
    )


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, D)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture()
def live(tmp_path):
    rng = np.random.default_rng(0)
    items = _items(np.arange(1, N + 1), rng)
    path = write_slot(tmp_path, "s1", _unit(rng, N), items, "v1", IndexConfig(kind="ivf", nprobe=8))
    with open_live(path) as lv:
        yield lv, rng


def _truth(live, flt):
    """Brute force over the live view: snapshot minus dead rows plus delta, filtered.
    Returns the eligible job ids [m] and their vectors [m, d]."""
    snap = live.snapshot
    keep = ~live.deleted_rows() & AttributeTable.from_items(snap.items).mask(flt)
    d_ids, d_vecs, d_items = live.delta()
    d_keep = AttributeTable.from_items(d_items.reset_index(drop=True)).mask(flt)
    ids = np.concatenate([snap.job_ids[keep], d_ids[d_keep]])
    vecs = np.concatenate([np.asarray(snap.vectors)[keep], d_vecs[d_keep]])
    return ids, vecs


def test_filtered_live_search_respects_filter_deletes_and_upserts(live) -> None:
    lv, rng = live
    flt = parse_filter({"and": [{"term": {"seniority": "senior"}}, {"term": {"active": True}}]})
    deleted = lv.snapshot.job_ids[:400]
    lv.delete(deleted)
    new_ids = np.arange(N + 1, N + 201)
    new_items = _items(new_ids, rng)
    lv.upsert(new_items, _unit(rng, len(new_ids)))
    q = _unit(rng, 20)
    hits = lv.query(q, 10, flt)
    ids, vecs = _truth(lv, flt)
    assert not np.isin(hits.job_ids, deleted).any()
    assert np.isin(hits.job_ids, ids).all()  # every result is live and passes the filter
    assert (hits.job_ids >= 0).all()  # k results: far more than k are eligible
    assert hits.plan["deleted_rows"] == 400 and hits.plan["delta_items"] > 0
    exact = ids[np.argsort(-(q @ vecs.T), axis=1)[:, :10]]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(hits.job_ids, exact, strict=True)])
    assert recall >= 0.9


def test_tiny_eligible_set_mixing_snapshot_and_delta_returns_all_of_it(live) -> None:
    lv, rng = live
    new_items = _items(np.array([N + 1, N + 2]), rng).assign(company="only", active=True)
    lv.upsert(new_items, _unit(rng, 2))
    # No snapshot job has company 'only': the eligible set is these two delta records.
    flt = parse_filter({"term": {"company": "only"}})
    hits = lv.query(_unit(rng, 3), 5, flt)
    assert sorted(hits.job_ids[0][:2].tolist()) == [N + 1, N + 2]
    assert (hits.job_ids[:, 2:] == -1).all()
    lv.delete([N + 1])
    hits = lv.query(_unit(rng, 3), 5, flt)
    assert (hits.job_ids[:, 0] == N + 2).all() and (hits.job_ids[:, 1:] == -1).all()


def test_served_search_returns_k_jobs_where_a_fixed_probe_falls_short(tmp_path) -> None:
    """Offline evaluation of the served index must see what serving returns: k jobs for
    large k, where the slot's own fixed nprobe visits too few IVF cells to fill them."""
    from ebr.eval.ranking import served_search
    from ebr.index.query.slot import load_slot

    rng = np.random.default_rng(1)
    items = _items(np.arange(1, N + 1), rng)
    path = write_slot(tmp_path, "s2", _unit(rng, N), items, "v1", IndexConfig(kind="ivf", nprobe=2))
    # The recall gate tunes nprobe for k=10 (here 32 of 76 cells, ~1,260 rows): fewer than k.
    queries, k = _unit(rng, 20), 2500
    fixed = load_slot(path).index.search(queries, k)[1]  # the raw index at its fixed nprobe
    assert ((fixed >= 0).sum(axis=1) < k).all()
    got = served_search(path)(queries, k)
    assert got.shape == (20, k) and (got >= 0).all()
    assert all(len(set(row)) == k for row in got.tolist())


def test_a_heavily_deleted_ivf_slot_still_fills_k(tmp_path) -> None:
    """3,000 jobs, 2,850 deleted, k=100: every caller gets the 100 best of the 150 live jobs
    (the IVF probes of the snapshot alone would hold far fewer of them)."""
    rng = np.random.default_rng(2)
    items = _items(np.arange(1, N + 1), rng)
    path = write_slot(tmp_path, "s3", _unit(rng, N), items, "v1", IndexConfig(kind="ivf", nprobe=4))
    with open_live(path) as lv:
        lv.delete(lv.snapshot.job_ids[:2850])
        queries = _unit(rng, 8)
        _, found = lv.search(queries, 100)
        assert (found >= 0).all() and all(len(set(r)) == 100 for r in found.tolist())
        live_ids = lv.snapshot.job_ids[2850:]
        vecs = np.asarray(lv.snapshot.vectors)[2850:]
        exact = live_ids[np.argsort(-(queries @ vecs.T), axis=1)[:, :100]]
        assert all(set(a) == set(b) for a, b in zip(found.tolist(), exact.tolist(), strict=True))
        assert (lv.query(queries, 100).job_ids == found).all()  # one path for every caller


@pytest.mark.parametrize(
    "bad",
    [
        lambda q: np.where(np.arange(D) == 3, np.nan, q),
        lambda q: np.where(np.arange(D) == 0, np.inf, q),
        lambda q: np.where(np.arange(D) == 0, -np.inf, q),
        lambda q: q * 0,
        lambda q: q * 3,
    ],
    ids=["nan", "inf", "-inf", "zero", "not-unit"],
)
def test_non_finite_or_unnormalised_queries_are_refused(live, bad) -> None:
    lv, rng = live
    q = _unit(rng, 3)
    q[1] = bad(q[1]).astype(np.float32)
    flt = parse_filter({"term": {"active": True}})
    for call in (lambda: lv.search(q, 5), lambda: lv.query(q, 5, flt)):
        with pytest.raises(ValueError, match="queries.* row 1"):
            call()


def test_bad_rows_in_the_log_are_skipped_and_counted_on_replay(tmp_path) -> None:
    """A log written before upserts were validated (or by another writer) holds lat=200:
    replay drops that row, keeps the rest of the batch and every later record, and filtered
    searches keep working."""
    import pyarrow as pa

    from ebr.index.live import wal

    rng = np.random.default_rng(3)
    items = _items(np.arange(1, N + 1), rng)
    path = write_slot(tmp_path, "s4", _unit(rng, N), items, "v1", IndexConfig(kind="flat"))
    with open_live(path) as lv:
        schema = lv._schema
    bad = _items(np.array([N + 1, N + 2, N + 3]), rng)
    bad["lat"] = [10.0, 200.0, 20.0]
    bad.loc[2, "title"] = None
    vecs = _unit(rng, 3)
    vecs[0] = np.nan  # a non-finite vector is as bad as a bad attribute
    table = pa.Table.from_pandas(bad, schema=schema, preserve_index=False)
    writer = wal.LogWriter(wal.log_dir_for(path))
    writer.resume(wal.replay(wal.log_dir_for(path), lambda rec: None))
    writer.append(wal.Record(wal.UPSERT, 1, bad["job_id"].to_numpy(), vecs, table))
    writer.close()
    with open_live(path) as lv:
        good = _items(np.array([N + 4]), rng)
        lv.upsert(good, _unit(rng, 1))  # the log goes on after the skipped rows
        stats = lv.stats()
        assert stats["skipped_log_rows"] == 3 and stats["delta_items"] == 1
        assert any("lat" in s for s in stats["skipped_examples"])
        hits = lv.query(
            _unit(rng, 2), 5, parse_filter({"geo_radius": {"lat": 0, "lon": 0, "km": 20_000}})
        )
        assert (hits.job_ids >= 0).all()
    with open_live(path, writable=False) as replica:  # a replica replays the same way
        assert replica.stats()["skipped_log_rows"] == 3
        assert N + 4 in replica.delta()[0]


@pytest.mark.parametrize(
    ("column", "value", "field"),
    [("lat", 200.0, "lat"), ("lon", float("inf"), "lon"), ("title", None, "title"),
     ("city", 5, "city"), ("remote", None, "remote")],
)  # fmt: skip
def test_upsert_refuses_what_readers_cannot_read(live, column, value, field) -> None:
    lv, rng = live
    rec = _items(np.array([N + 1, N + 2]), rng).astype({column: object})
    rec.at[1, column] = value
    before = lv.stats()["lsn"]
    with pytest.raises(ValueError, match=rf"row 1 \(job_id={N + 2}\): {field}"):
        lv.upsert(rec, _unit(rng, 2))
    assert lv.stats()["lsn"] == before  # nothing was logged


def test_nullable_fields_upsert_and_filter(live) -> None:
    lv, rng = live
    rec = _items(np.array([N + 1]), rng).astype(object)
    for col in ("city", "company", "country", "lat", "lon", "posted_at"):
        rec.at[0, col] = None
    lv.upsert(rec, _unit(rng, 1))
    hits = lv.query(_unit(rng, 1), 5, parse_filter({"not": {"term": {"city": "c"}}}))
    assert hits.job_ids[0, 0] == N + 1 and (hits.job_ids[0, 1:] == -1).all()
    assert hits.delta_items["city"].isna().all()
    near = lv.query(
        _unit(rng, 1), 5, parse_filter({"geo_radius": {"lat": 0, "lon": 0, "km": 20_000}})
    )
    assert N + 1 not in near.job_ids  # an unknown location never matches a geo filter


@pytest.mark.parametrize("change", ["none", "upserts", "deletes", "superseded"])
def test_unfiltered_queries_equal_the_planners_general_path(live, change) -> None:
    """The unfiltered fast path (the index's own search, no [n] mask) answers as the planner's
    rounds do, before and after live writes; deleted and upserted jobs are honoured."""
    from ebr.index.query.planner import PlannerParams
    from ebr.index.query.probing import ivf_layout

    lv, rng = live
    if change == "upserts":
        lv.upsert(_items(np.arange(N + 1, N + 51), rng), _unit(rng, 50))
    elif change == "deletes":
        lv.delete(lv.snapshot.job_ids[:300])
    elif change == "superseded":  # new vectors for existing jobs: snapshot rows superseded
        lv.upsert(_items(lv.snapshot.job_ids[:40], rng), _unit(rng, 40))
    assert ivf_layout(lv.snapshot.index)[2].all()  # no empty cell: the fast path applies
    # An explicit nprobe (the slot's own) sends the query through the planner's rounds.
    general = PlannerParams(nprobe=lv.snapshot.manifest["index"]["nprobe"])
    q = _unit(rng, 16)
    for k in (10, 100):
        fast, slow = lv.query(q, k), lv.query(q, k, params=general)
        np.testing.assert_array_equal(fast.job_ids, slow.job_ids)
        np.testing.assert_allclose(fast.scores, slow.scores, rtol=1e-5)
        assert fast.plan == slow.plan
        pd.testing.assert_frame_equal(fast.delta_items, slow.delta_items)
    deleted = np.setdiff1d(lv.snapshot.job_ids[lv.deleted_rows()], lv.delta()[0])
    hits = lv.query(q, 100)
    assert not np.isin(hits.job_ids, deleted).any() and (hits.job_ids >= 0).all()
    assert hits.plan["deleted_rows"] == int(lv.deleted_rows().sum())
    # Tombstones make a mask (this small slot then scans exactly); without them, the index.
    assert (hits.plan["strategy"] == "ann") == (change in ("none", "upserts"))
    d_ids, d_vecs, _ = lv.delta()  # brute force over the live view: recall as the index's
    keep = ~lv.deleted_rows()
    ids = np.concatenate([lv.snapshot.job_ids[keep], d_ids])
    vecs = np.concatenate([np.asarray(lv.snapshot.vectors)[keep], d_vecs])
    exact = ids[np.argsort(-(q @ vecs.T), axis=1)[:, :100]]
    recall = np.mean([len(set(a) & set(b)) / 100 for a, b in zip(hits.job_ids, exact, strict=True)])
    assert recall >= 0.9


@pytest.mark.parametrize("k", [10, 100])
def test_deletes_alone_take_the_postfilter_and_never_return_a_deleted_job(live, k) -> None:
    """A live view's not-deleted mask is frozen (its derived data cached); with deletes alone
    the index's own search is post-filtered: k live jobs a query, none deleted, batched and
    one query per call alike; a later delete publishes a new mask that is honoured."""
    from ebr.index.query.masks import cached
    from ebr.index.query.planner import PlannerParams

    lv, rng = live
    ann = PlannerParams(exact_max_eligible=0, exact_max_fraction=0.0)  # small slot: no exact
    q = _unit(rng, 12)
    nearest = lv.query(q, 5).job_ids[:, 0]
    lv.delete(np.concatenate([nearest, lv.snapshot.job_ids[::7]]))  # their best, and many
    hits = lv.query(q, k, params=ann)
    mask = lv._current()[2].eligible
    assert mask is not None and not mask.flags.writeable and cached(mask)
    assert hits.plan["strategy"] == "ann_postfiltered"
    dead = lv.snapshot.job_ids[lv.deleted_rows()]
    assert not np.isin(hits.job_ids, dead).any() and (hits.job_ids >= 0).all()
    for i in range(len(q)):
        one = lv.query(q[i : i + 1], k, params=ann)
        assert not np.isin(one.job_ids, dead).any() and (one.job_ids >= 0).all()
    lv.delete(hits.job_ids[:, 0])
    again = lv.query(q, k, params=ann)
    assert not np.isin(again.job_ids, hits.job_ids[:, 0]).any() and (again.job_ids >= 0).all()
    assert lv._current()[2].eligible is not mask  # a new view, a new frozen mask


@pytest.mark.parametrize("retrieval", ["ebr", "term", "hybrid"])
def test_streamed_rows_come_converted_once_per_view(live, retrieval: str) -> None:
    """A page's upserted jobs come as plain rows (``Hits.delta_rows``), equal to converting the
    page's delta frame, nulls as None; each log table is converted once for the slot, not once
    per query or per view (a stream makes a new view every refresh)."""
    from ebr.index.query.slot import plain_columns

    lv, rng = live
    rec = _items(np.arange(N + 1, N + 41), rng).astype(object)
    rec.at[0, "city"], rec.at[1, "posted_at"] = None, None  # nulls travel as None
    vecs = _unit(rng, 40)
    lv.upsert(rec, vecs)
    view = lv.view()
    texts = [f"job {N + i + 1}" for i in range(5)]
    from ebr.index.query.retrieve import retrieve

    found = retrieve(view, vecs[:5], 10, texts=texts, retrieval=retrieval)
    assert len(found.delta_items), "upserted jobs on the pages"
    plain = plain_columns(found.delta_items)
    want = {int(j): {c: v[i] for c, v in plain.items()} for i, j in enumerate(plain["job_id"])}
    assert found.delta_rows == want
    assert all(row["city"] is None for j, row in want.items() if j == N + 1)
    cache = view.delta.table_cache
    converted = {key: hit[1] for key, hit in cache.items() if key[0] == "plain"}
    assert converted, "the page's tables were converted"
    lv.upsert(_items(np.array([N + 99]), rng), _unit(rng, 1))  # the stream moves on: a new view
    later = lv.view()
    assert later is not view and later.delta.table_cache is cache
    again = retrieve(later, vecs[:5], 10, texts=texts, retrieval=retrieval)
    assert again.delta_rows == found.delta_rows
    assert all(cache[key][1] is plain for key, plain in converted.items())  # not converted again


def test_each_upserted_table_is_counted_for_terms_once_for_the_slot(live) -> None:
    """A new view (a stream makes one a second) joins its tables' term counts: only a table
    no earlier view counted is counted, and a hybrid search over it finds the new words."""
    lv, rng = live
    q = _unit(rng, 1)
    lv.upsert(_items(np.array([N + 1, N + 2]), rng).assign(title="zebra keeper"), _unit(rng, 2))
    lv.query(q, 5, texts=["zebra keeper"], retrieval="hybrid")

    def counted() -> dict:
        return {key: v for key, v in lv._current()[1].table_cache.items() if key[0] == "terms"}

    first = counted()
    assert len(first) == 1
    lv.upsert(_items(np.array([N + 3]), rng).assign(title="zebra trainer"), _unit(rng, 1))
    hits = lv.query(q, 5, texts=["zebra trainer"], retrieval="hybrid")
    second = counted()
    assert len(second) == 2 and all(second[key][1] is first[key][1] for key in first)
    assert N + 3 in set(hits.job_ids[0].tolist())


def test_warm_works_out_every_table_before_the_first_query(live, monkeypatch) -> None:
    """``Delta.warm`` (a release load calls it) derives each table's plain rows, term counts
    and places, and what it is asked for more: the first hybrid query then derives nothing."""
    from ebr.index.query import search

    lv, rng = live
    for i in range(3):  # three upsert tables
        rec = _items(np.array([N + 10 + i]), rng).assign(title=f"walrus tamer {i}")
        lv.upsert(rec, _unit(rng, 1))
    delta = lv.view().delta
    made: list[str] = []
    delta.warm(lv.snapshot.items, ("extra", lambda frame: made.append("extra") or len(frame)))
    keys = {key[0] for key, (table, _) in delta.table_cache.items() if table in delta.tables}
    assert {"frame", "plain", "terms", "places", "extra"} <= keys
    assert len(made) == len(delta.tables)
    calls: list[int] = []
    real = search._doc_terms
    monkeypatch.setattr(search, "_doc_terms", lambda frame: calls.append(1) or real(frame))
    hits = lv.query(_unit(rng, 1), 5, texts=["walrus tamer"], retrieval="hybrid")
    assert not calls, "the first query counted terms again"
    assert {N + 10, N + 11, N + 12} & set(hits.job_ids[0].tolist())
