"""Signed-in search on a live slot (``LiveSlot.query(personal=...)``): the query leads, the
member reorders: results are only ever the query-led candidates (ebr and hybrid: plus the
member-aware embedding's own list, entering at the query-led floor), weight 0 is the query-led
order, weight 1 the member's order of them, and filters, deletes and upserts hold."""

from __future__ import annotations

import numpy as np
import pytest

from ebr.config import IndexConfig
from ebr.index.build.writer import write_slot
from ebr.index.live.slot import open_live
from ebr.index.query.attributes import AttributeTable
from ebr.index.query.filters import parse_filter
from ebr.index.query.fusion import (
    DEFAULT_COMMUTE_KM,
    GEO_WEIGHT,
    MEMBER_DEPTH,
    PERSONAL_DEPTH,
    commute_decay,
    personal_rerank,
    with_member_led,
)
from ebr.index.query.personal import Places
from tests.unit.test_search_live import D, N, _items, _unit


@pytest.fixture()
def live(tmp_path):
    rng = np.random.default_rng(1)
    items = _items(np.arange(1, N + 1), rng)
    path = write_slot(tmp_path, "s1", _unit(rng, N), items, "v1", IndexConfig(kind="flat"))
    with open_live(path) as lv:
        yield lv, rng


def _cos(lv, ids: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Cosine of each live job in ``ids`` to ``member`` [d], from the live view's own rows."""
    d_ids, d_vecs, _ = lv.delta()
    snap = lv.snapshot
    vec = dict(zip(snap.job_ids.tolist(), np.asarray(snap.vectors), strict=True))
    vec.update(zip(d_ids.tolist(), d_vecs, strict=True))
    return np.array([float(vec[int(j)] @ member) for j in ids])


@pytest.mark.parametrize("retrieval", ["ebr", "term", "hybrid"])
def test_results_are_query_led_candidates_reordered(live, retrieval: str) -> None:
    lv, rng = live
    q, member = _unit(rng, 3), _unit(rng, 3)
    texts = ["job 12", "job 7", "job 300"]
    vecs = None if retrieval == "term" else q
    led = lv.query(vecs, PERSONAL_DEPTH, texts=texts, retrieval=retrieval)
    own = lv.query(member, MEMBER_DEPTH)  # the member-aware embedding's own list
    for w in (0.0, 0.3, 1.0):
        got = lv.query(vecs, 10, texts=texts, retrieval=retrieval, personal=member,
                       personal_weight=w)  # fmt: skip
        assert got.plan["personal_weight"] == w
        for row in range(3):
            cands = led.job_ids[row][led.job_ids[row] >= 0]
            if retrieval != "term":  # term stays keyword matches
                extra = own.job_ids[row][~np.isin(own.job_ids[row], cands)]
                cands = np.concatenate([cands, extra[extra >= 0]])
            ids = got.job_ids[row][got.job_ids[row] >= 0]
            assert set(ids) <= set(cands)  # never a job the query (or the member's) did not find
            assert len(ids) == min(10, len(cands))
            if w == 0.0:  # the query-led order (ties aside: a tie keeps its position)
                np.testing.assert_array_equal(ids, cands[: len(ids)])
            if w == 1.0:  # the member's order of the candidates
                cos = _cos(lv, ids, member[row])
                assert (np.diff(cos) <= 1e-6).all()
                assert cos[0] >= _cos(lv, cands, member[row]).max() - 1e-6


def test_filters_deletes_and_upserts_hold(live) -> None:
    lv, rng = live
    flt = parse_filter({"term": {"seniority": "senior"}})
    deleted = lv.snapshot.job_ids[:300]
    lv.delete(deleted)
    new_ids = np.arange(N + 1, N + 101)
    new_items = _items(new_ids, rng).assign(seniority="senior")
    new_vecs = _unit(rng, len(new_ids))
    lv.upsert(new_items, new_vecs)
    # An upserted snapshot job gets a new vector: the member's vector is exactly it.
    moved = int(lv.snapshot.job_ids[500])
    moved_item = _items(np.array([moved]), rng).assign(seniority="senior")
    moved_vec = _unit(rng, 1)
    lv.upsert(moved_item, moved_vec)
    q = moved_vec.copy()
    got = lv.query(q, 20, flt, personal=moved_vec, personal_weight=1.0)
    ids = got.job_ids[0]
    assert len(ids[ids >= 0]) == 20
    assert not np.isin(ids, deleted).any()
    d_ids, _, d_items = lv.delta()
    snap_ok = AttributeTable.from_items(lv.snapshot.items).mask(flt)
    senior = set(lv.snapshot.job_ids[snap_ok]) | set(d_ids[d_items["seniority"] == "senior"])
    assert set(ids) <= senior
    assert ids[0] == moved  # its upserted vector, not the snapshot row's
    assert moved in set(got.delta_items["job_id"])


def test_personal_rerank_checks_its_inputs() -> None:
    ids = np.array([[3, 1, -1]])
    s = np.array([[0.9, 0.5, -np.inf]])
    with pytest.raises(ValueError, match="weight"):
        personal_rerank(ids, s, s, 2, 1.5)
    with pytest.raises(ValueError, match="k must be"):
        personal_rerank(ids, s, s, 0)
    with pytest.raises(ValueError, match="must be \\[q, N\\]"):
        personal_rerank(ids, s[:, :2], s, 2)
    sc, out = personal_rerank(ids, s, np.array([[0.0, 1.0, 0.0]]), 4, 0.5)
    assert out.tolist() == [[3, 1, -1, -1]] and np.isneginf(sc[0, 2:]).all()


def test_member_led_jobs_enter_at_the_query_led_floor() -> None:
    ids = np.array([[5, 2, 9, -1], [-1, -1, -1, -1]])
    s = np.array([[3.0, 2.0, 0.5, -np.inf], [-np.inf] * 4])
    member = np.array([[9, 7, -1, 7], [4, 4, 8, -1]])
    both, sc = with_member_led(ids, s, member)
    # 9 is a query match already; 7 enters once at the row's weakest query-led score (0.5).
    assert both[0].tolist() == [5, 2, 9, -1, -1, 7, -1, -1]
    assert sc[0, 5] == 0.5 and np.isneginf(sc[0, [3, 4, 6, 7]]).all()
    assert both[1].tolist() == [-1] * 4 + [4, -1, 8, -1]  # no query match: the member's list
    # At weight 0 the query-led order stands: member-led jobs after every query match.
    cos = np.where(both >= 0, 1.0 - 0.1 * np.arange(8), 0.0)
    cos[0, 5] = 1.5  # the member's favourite
    out = personal_rerank(both, sc, cos, 4, 0.0)[1]
    assert out[0].tolist() == [5, 2, 9, 7]
    assert personal_rerank(both, sc, cos, 4, 0.5)[1][0, 0] == 5  # the best match holds
    assert personal_rerank(both, sc, cos, 4, 1.0)[1][0, 0] == 7  # the member alone
    # With their own query-led scores (NaN: unknown -> the floor) they compete on the query.
    own = np.array([[np.nan, 2.5, np.nan, np.nan], [1.0, 1.0, np.nan, np.nan]])
    both2, sc2 = with_member_led(ids, s, member, own)
    assert both2.tolist() == both.tolist() and sc2[0, 5] == 2.5 and sc2[1, 4] == 1.0
    assert sc2[1, 6] == 0.0  # no query-led score known: the floor (0 here: no query match)
    assert personal_rerank(both2, sc2, cos, 4, 0.0)[1][0].tolist() == [5, 7, 2, 9]
    with pytest.raises(ValueError, match="member_scores"):
        with_member_led(ids, s, member, own[:, :2])
    with pytest.raises(ValueError, match="member_ids"):
        with_member_led(ids, s, member[:1])
    with pytest.raises(ValueError, match="must be \\[q, N\\]"):
        with_member_led(ids, s[:, :2], member)


def test_personal_vectors_are_validated(live) -> None:
    lv, rng = live
    q = _unit(rng, 1)
    for bad, what in (
        (np.ones((1, D + 1), np.float32), "personal must be"),
        (_unit(rng, 2), "personal"),
    ):
        with pytest.raises(ValueError, match=what):
            lv.query(q, 5, personal=bad)
    with pytest.raises(ValueError, match="personal vectors: .*NaN"):
        lv.query(q, 5, personal=np.full((1, D), np.nan, np.float32))


def test_commute_decay() -> None:
    # Two members: one in Berlin (30 km radius, not remote), one unknown place open to remote.
    lat, lon = np.array([52.52, np.nan]), np.array([13.40, np.nan])
    radius, remote_ok = np.array([30.0, np.nan]), np.array([False, True])
    # Jobs: Berlin centre, ~60 km out (2 radii: 0.5), ~90 km (0.25), remote far, unknown place.
    j_lat = np.tile([52.52, 52.52, 52.52, 40.0, np.nan], (2, 1))
    j_lon = np.tile([13.40, 14.2855, 14.7283, -74.0, np.nan], (2, 1))
    j_remote = np.tile([False, False, False, True, False], (2, 1))
    got = commute_decay(lat, lon, radius, remote_ok, j_lat, j_lon, j_remote)
    assert got.dtype == np.float32 and got.shape == (2, 5)
    np.testing.assert_allclose(got[0], [1.0, 0.5, 0.25, 0.0, 0.0], atol=0.01)
    # Unknown home: only the remote job counts (the member accepts remote).
    np.testing.assert_array_equal(got[1], [0.0, 0.0, 0.0, 1.0, 0.0])
    # No radius: DEFAULT_COMMUTE_KM; a non-positive one too.
    for r in (np.nan, 0.0, -5.0):
        d = commute_decay(lat[:1], lon[:1], np.array([r]), remote_ok[:1], j_lat[:1], j_lon[:1],
                          j_remote[:1])  # fmt: skip
        km = 60.0 - 30.0  # beyond DEFAULT_COMMUTE_KM (30): 0.5 ** (30 / 30)
        assert d[0, 1] == pytest.approx(0.5 ** (km / DEFAULT_COMMUTE_KM), abs=0.01)


def test_places_of_profiles() -> None:
    p = Places.of([
        {"lat": 1.0, "lon": 2.0, "max_commute_km": 15.0, "open_to_remote": True},
        {"lat": None, "lon": float("nan"), "open_to_remote": None},
        {},
    ])  # fmt: skip
    assert p.lat[0] == 1.0 and np.isnan(p.lat[1:]).all() and np.isnan(p.lon[1:]).all()
    assert p.radius_km[0] == 15.0 and np.isnan(p.radius_km[1:]).all()
    assert p.open_to_remote.tolist() == [True, False, False]


def test_the_member_home_pulls_nearby_candidates_up(live) -> None:
    lv, rng = live
    q, member = _unit(rng, 1), _unit(rng, 1)
    led = lv.query(q, PERSONAL_DEPTH).job_ids[0]
    items = lv.snapshot.items.set_index("job_id")
    far = int(led[150])  # deep in the query-led list
    home = items.loc[far]
    place = Places(np.array([home["lat"]]), np.array([home["lon"]]), np.array([10.0]),
                   np.array([False]))  # fmt: skip
    plain = lv.query(q, 10, personal=member, personal_weight=1.0)
    assert far not in plain.job_ids[0] and "geo_weight" not in plain.plan
    near = lv.query(q, 10, personal=member, personal_weight=1.0, places=place)
    assert near.plan["geo_weight"] == GEO_WEIGHT
    # Weighted enough against the cosine, the candidate at the member's home leads.
    near = lv.query(q, 10, personal=member, personal_weight=1.0, places=place, geo_weight=5.0)
    assert near.job_ids[0][0] == far
    # An upserted job is placed by its new record: moved onto the member's home, it leads.
    moved = int(led[120])
    lv.upsert(_items(np.array([moved]), rng).assign(lat=home["lat"], lon=home["lon"],
                                                   remote=False),
              candidate_vectors_of(lv, moved))  # fmt: skip
    again = lv.query(q, 10, personal=member, personal_weight=1.0, places=place, geo_weight=5.0)
    assert set(again.job_ids[0][:2]) == {far, moved}
    with pytest.raises(ValueError, match="places must hold 1"):
        two = Places(*(np.repeat(x, 2) for x in (place.lat, place.lon, place.radius_km,
                                                 place.open_to_remote)))  # fmt: skip
        lv.query(q, 10, personal=member, places=two)


def candidate_vectors_of(lv, job_id: int) -> np.ndarray:
    """The snapshot vector of ``job_id`` [1, d] (an upsert that moves a job keeps its text)."""
    row = lv.snapshot.row_positions(np.array([job_id]))
    return np.asarray(lv.snapshot.vectors)[row]
