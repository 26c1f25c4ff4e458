"""Filter expressions and the attribute table: random trees against brute-force evaluation.

Run: ``pytest -q tests/unit/test_filters.py``

The brute force reads the JSON tree directly with pandas/numpy (haversine for geo), sharing no
code with ``ebr.index.query.filters`` / ``ebr.index.query.attributes`` beyond ``haversine_km``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebr.data.geo import haversine_km
from ebr.index.query.attributes import AttributeTable
from ebr.index.query.filters import parse_filter

N = 3_000
VOCAB = {
    "seniority": ["entry", "mid", "senior", "lead", "director"],
    "industry": ["finance", "health", "retail", "tech"],
    "company": [f"Co {i}" for i in range(40)],
    "employment_type": ["full_time", "part_time", "contract"],
    "country": ["US", "GB", "FJ", "NZ", "NO"],
    "city": ["Suva", "Oslo", "Auckland", "Austin", "Leeds", "Longyearbyen"],
}
T0, T1 = 1_780_000_000, 1_790_000_000  # posted_at range, epoch seconds
SEAM_LONS = [-180.0, 180.0, -179.9999, 179.9999]  # on and just beside the antimeridian


def make_items(n: int, seed: int) -> pd.DataFrame:
    """Random jobs with nulls, near-pole, near- and on-antimeridian points and repeated cities."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({f: rng.choice(np.array(v, dtype=object), n) for f, v in VOCAB.items()})
    for f in ("industry", "city"):
        df.loc[rng.random(n) < 0.05, f] = None
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))  # uniform on the sphere
    lon = rng.uniform(-180, 180, n)
    part = np.array_split(rng.permutation(n), 6)
    lat[part[0]] = rng.choice([-1, 1], len(part[0])) * rng.uniform(85, 90, len(part[0]))
    lon[part[1]] = rng.choice([-1, 1], len(part[1])) * rng.uniform(178, 180, len(part[1]))
    lat[part[1]] = rng.uniform(-30, 30, len(part[1]))
    cities = np.array([[-18.14, 178.44], [59.91, 10.75], [-36.85, 174.76], [78.22, 15.65]])
    pick = cities[rng.integers(0, len(cities), len(part[2]))]
    lat[part[2]], lon[part[2]] = pick[:, 0], pick[:, 1]
    lat[part[3][:60]], lon[part[3][60:120]] = np.nan, np.nan  # unknown places
    lon[part[4]] = rng.choice(SEAM_LONS, len(part[4]))
    df["lat"], df["lon"] = lat, lon
    df["remote"], df["active"] = rng.random(n) < 0.2, rng.random(n) < 0.9
    df["posted_at"] = pd.to_datetime(rng.integers(T0, T1, n), unit="s", utc=True)
    df.loc[rng.random(n) < 0.02, "posted_at"] = pd.NaT
    return df


@pytest.fixture(scope="module")
def items() -> pd.DataFrame:
    return make_items(N, seed=1)


@pytest.fixture(scope="module")
def table(items: pd.DataFrame) -> AttributeTable:
    return AttributeTable.from_items(items)


def _epoch(value: Any) -> float:
    if isinstance(value, str):
        ts = datetime.fromisoformat(value)
        return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()
    return float(value)


def brute(node: dict[str, Any], df: pd.DataFrame) -> np.ndarray:
    """Evaluate the JSON tree row by row semantics, vectorised with pandas/numpy."""
    ((op, body),) = node.items()
    if op == "and":
        return np.logical_and.reduce([brute(c, df) for c in body])
    if op == "or":
        return np.logical_or.reduce([brute(c, df) for c in body])
    if op == "not":
        return ~brute(body, df)
    if op == "term":
        ((field, value),) = body.items()
        values = value if isinstance(value, list) else [value]
        col = df[field]
        return (col.notna() & col.isin(values)).to_numpy()
    if op == "range":
        ((field, ops),) = body.items()
        if field == "posted_at":
            col = df[field]
            secs = (col - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
            x, ok = secs.fillna(0).to_numpy(np.float64), col.notna().to_numpy()
            bounds = {o: _epoch(v) for o, v in ops.items()}
        else:
            x = df[field].to_numpy(np.float64)
            ok, bounds = ~np.isnan(x), {o: float(v) for o, v in ops.items()}

        def within(v: np.ndarray) -> np.ndarray:
            out = np.ones(len(v), dtype=bool)
            for o, b in bounds.items():
                out &= {"gte": v >= b, "gt": v > b, "lte": v <= b, "lt": v < b}[o]
            return out

        if field != "lon":
            return ok & within(x)
        return ok & (within(x) | ((np.abs(x) == 180) & within(-x)))  # ±180: either end counts
    lat, lon = df["lat"].to_numpy(), df["lon"].to_numpy()
    if op == "geo_radius":  # NaN distances (unknown places) compare False
        d = haversine_km(np.asarray(body["lat"]), np.asarray(body["lon"]), lat, lon)
        return d <= body["km"]
    if op == "geo_bbox":
        lo, hi = body["min_lon"], body["max_lon"]

        def in_lon(v: np.ndarray) -> np.ndarray:
            return (v >= lo) | (v <= hi) if lo > hi else (v >= lo) & (v <= hi)

        lon_ok = in_lon(lon) | ((np.abs(lon) == 180) & in_lon(-lon))  # ±180: either end counts
        return (lat >= body["min_lat"]) & (lat <= body["max_lat"]) & lon_ok
    raise AssertionError(op)


# ---- hypothesis strategies for valid filter trees
lats = st.floats(-90, 90, allow_nan=False)
lons = st.one_of(st.sampled_from(SEAM_LONS), st.floats(-180, 180, allow_nan=False))


def _term() -> st.SearchStrategy[dict[str, Any]]:
    def one(field: str) -> st.SearchStrategy[Any]:
        if field in ("remote", "active"):
            return st.booleans()
        return st.sampled_from([*VOCAB[field], "nope"])

    def term(f: str) -> st.SearchStrategy[dict[str, Any]]:
        values = st.one_of(one(f), st.lists(one(f), min_size=1, max_size=4))
        return values.map(lambda v: {"term": {f: v}})

    return st.sampled_from([*VOCAB, "remote", "active"]).flatmap(term)


def _bound(field: str) -> st.SearchStrategy[Any]:
    if field == "lat":
        return lats
    if field == "lon":
        return lons
    secs = st.integers(T0 - 10**6, T1 + 10**6)
    iso = secs.map(lambda s: datetime.fromtimestamp(s, UTC).isoformat())
    naive = secs.map(lambda s: datetime.fromtimestamp(s, UTC).replace(tzinfo=None).isoformat())
    return st.one_of(secs, secs.map(lambda s: s + 0.5), iso, naive)


def _range() -> st.SearchStrategy[dict[str, Any]]:
    def ops(field: str) -> st.SearchStrategy[dict[str, Any]]:
        lower = st.sampled_from(["gte", "gt", None])
        upper = st.sampled_from(["lte", "lt", None])
        return (
            st.tuples(lower, upper, _bound(field), _bound(field))
            .filter(lambda t: t[0] is not None or t[1] is not None)
            .map(lambda t: {o: b for o, b in ((t[0], t[2]), (t[1], t[3])) if o is not None})
        )

    return st.sampled_from(["posted_at", "lat", "lon"]).flatmap(
        lambda f: ops(f).map(lambda o: {"range": {f: o}})
    )


kms = st.one_of(st.floats(0.5, 400), st.floats(400, 4000), st.floats(4000, 20_040))
radius = st.builds(lambda a, b, km: {"geo_radius": {"lat": a, "lon": b, "km": km}}, lats, lons, kms)
corners = st.tuples(lats, lats, lons, lons).filter(lambda c: c[0] <= c[1])
keys = ("min_lat", "max_lat", "min_lon", "max_lon")
bbox = corners.map(lambda c: {"geo_bbox": dict(zip(keys, c, strict=True))})
leaves = st.one_of(_term(), _range(), radius, bbox)
trees = st.recursive(
    leaves,
    lambda kids: st.one_of(
        st.lists(kids, min_size=1, max_size=3).map(lambda c: {"and": c}),
        st.lists(kids, min_size=1, max_size=3).map(lambda c: {"or": c}),
        kids.map(lambda c: {"not": c}),
    ),
    max_leaves=8,
)
fast = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(tree=trees)
def test_mask_equals_brute_force_and_json_round_trips(
    tree: dict[str, Any], table: AttributeTable, items: pd.DataFrame
) -> None:
    flt = parse_filter(tree)
    np.testing.assert_array_equal(table.mask(flt), brute(tree, items), err_msg=json.dumps(tree))
    assert parse_filter(json.loads(json.dumps(flt.to_json()))) == flt


@settings(max_examples=40, deadline=None)
@given(lat=lats, lon=lons, km=kms)
def test_radius_disk_and_scan_agree_with_haversine(
    lat: float, lon: float, km: float, table: AttributeTable, items: pd.DataFrame
) -> None:
    truth = np.flatnonzero(brute({"geo_radius": {"lat": lat, "lon": lon, "km": km}}, items))
    # A forced disk of a 20,000 km radius is ~600k H3 cells: force it only where it is sane.
    for via in ("disk", "scan", "auto") if km <= 3_000 else ("scan", "auto"):
        np.testing.assert_array_equal(np.sort(table.radius_rows(lat, lon, km, via=via)), truth)


def _points(lat_lon: list[tuple[float, float]]) -> tuple[pd.DataFrame, AttributeTable]:
    df = make_items(len(lat_lon), seed=2)
    df["lat"], df["lon"] = [p[0] for p in lat_lon], [p[1] for p in lat_lon]
    return df, AttributeTable.from_items(df)


def test_radius_across_the_antimeridian() -> None:
    df, table = _points([(0.0, -179.9), (0.0, 179.95), (0.0, 179.0), (0.0, -178.0), (1.0, 180.0)])
    rows = np.sort(table.radius_rows(0.0, 179.9, 30.0, via="disk"))
    # 0.2 degrees of longitude at the equator is ~22 km, across the seam.
    np.testing.assert_array_equal(rows, [0, 1])
    truth = np.flatnonzero(brute({"geo_radius": {"lat": 0.0, "lon": 179.9, "km": 250.0}}, df))
    for via in ("disk", "scan"):
        np.testing.assert_array_equal(np.sort(table.radius_rows(0.0, 179.9, 250.0, via=via)), truth)


def test_radius_around_the_pole() -> None:
    pts = [(89.9, lon) for lon in (-180.0, -90.0, 0.0, 90.0, 179.0)] + [(88.0, 45.0), (85.0, 0.0)]
    df, table = _points(pts)
    for via in ("disk", "scan"):
        got = np.sort(table.radius_rows(89.5, -120.0, 300.0, via=via))
        # ~55-67 km to the pole-side points, 222+ km to lat 88, ~500 km to lat 85.
        np.testing.assert_array_equal(got, [0, 1, 2, 3, 4, 5])


def test_bbox_wrapping_the_antimeridian() -> None:
    df, table = _points([(-17.0, 178.0), (-17.0, -179.0), (-17.0, 0.0), (-30.0, 179.0)])
    box = {"geo_bbox": {"min_lat": -20, "min_lon": 170, "max_lat": -10, "max_lon": -170}}
    np.testing.assert_array_equal(np.flatnonzero(table.mask(parse_filter(box))), [0, 1])


def test_null_locations_never_match_geo(table: AttributeTable, items: pd.DataFrame) -> None:
    whole_earth = parse_filter({"geo_radius": {"lat": 0, "lon": 0, "km": 20_040}})
    known = items["lat"].notna() & items["lon"].notna()
    np.testing.assert_array_equal(table.mask(whole_earth), known.to_numpy())


def test_from_items_rejects_bad_coordinates(items: pd.DataFrame) -> None:
    bad = items.copy()
    bad.loc[7, "lat"] = 91.0
    with pytest.raises(ValueError, match="row 7 has lat=91"):
        AttributeTable.from_items(bad)
    with pytest.raises(ValueError, match="lack the filterable columns"):
        AttributeTable.from_items(items.drop(columns=["city"]))


# ---- longitude -180 and 180 are one meridian
# Rows: 0 and 1 on the meridian (stored either way), 2 and 3 a hair either side of it.
SEAM = [(0.0, -180.0), (0.0, 180.0), (0.0, 179.9999), (0.0, -179.9999)]
SEAM += [(0.0, 0.0), (0.0, 170.0), (0.0, -170.0), (0.5, 180.0)]
EVERY = list(range(len(SEAM)))


@pytest.mark.parametrize(
    ("min_lon", "max_lon", "want"),
    [
        (170, 180, [0, 1, 2, 5, 7]),  # ends at 180: holds the job at -180
        (-180, -170, [0, 1, 3, 6, 7]),  # starts at -180: holds the jobs at 180
        (-180, 180, EVERY),  # full width, not one meridian
        (-180, 0, [0, 1, 3, 4, 6, 7]),
        (0, 180, [0, 1, 2, 4, 5, 7]),
        (170, -180, [0, 1, 2, 5, 7]),  # wraps, ends at -180
        (180, -170, [0, 1, 3, 6, 7]),  # wraps, starts at 180
        (179, -179, [0, 1, 2, 3, 7]),
        (-179.9999, 179.9999, [2, 3, 4, 5, 6]),  # everything but the meridian
        (180, 180, [0, 1, 7]),
        (-180, -180, [0, 1, 7]),
        (180, -180, [0, 1, 7]),  # wraps by nothing: the meridian alone
    ],
)
def test_bbox_at_the_meridian(min_lon: float, max_lon: float, want: list[int]) -> None:
    df, table = _points(SEAM)
    box = {"geo_bbox": {"min_lat": -1, "max_lat": 1, "min_lon": min_lon, "max_lon": max_lon}}
    flt = parse_filter(box)
    np.testing.assert_array_equal(np.flatnonzero(table.mask(flt)), want)
    np.testing.assert_array_equal(table.mask(flt), brute(box, df))
    assert parse_filter(json.loads(json.dumps(flt.to_json()))) == flt


@pytest.mark.parametrize(
    ("ops", "want"),
    [
        ({"gte": -180}, EVERY),
        ({"lte": -170}, [0, 1, 3, 6, 7]),  # the meridian is -180 too
        ({"lte": -180}, [0, 1, 7]),
        ({"gte": 180}, [0, 1, 7]),
        ({"lt": -180}, []),
        ({"gt": 180}, []),
        ({"gt": -180}, EVERY),  # 180 > -180
        ({"gt": -180, "lt": 180}, [2, 3, 4, 5, 6]),  # neither end admitted
        ({"gte": 170, "lte": 180}, [0, 1, 2, 5, 7]),
        ({"gte": -180, "lt": -170}, [0, 1, 3, 7]),
    ],
)
def test_lon_range_at_the_meridian(ops: dict[str, float], want: list[int]) -> None:
    df, table = _points(SEAM)
    flt = parse_filter({"range": {"lon": ops}})
    np.testing.assert_array_equal(np.sort(np.flatnonzero(table.mask(flt))), want)
    np.testing.assert_array_equal(table.mask(flt), brute({"range": {"lon": ops}}, df))


@pytest.mark.parametrize("lon", [180.0, -180.0])
def test_radius_around_the_meridian(lon: float) -> None:
    df, table = _points(SEAM)
    for via in ("disk", "scan"):  # 1e-4 degrees is ~11 m; 0.5 degrees of latitude ~56 km
        np.testing.assert_array_equal(
            np.sort(table.radius_rows(0.0, lon, 1.0, via=via)), [0, 1, 2, 3]
        )
        np.testing.assert_array_equal(
            np.sort(table.radius_rows(0.0, lon, 60.0, via=via)), [0, 1, 2, 3, 7]
        )
    np.testing.assert_array_equal(df["lon"].to_numpy(), [p[1] for p in SEAM])  # caller's untouched


def test_a_search_request_carries_its_filter_parsed_once() -> None:
    from serving.schemas import SearchRequest

    tree = {"and": [{"term": {"seniority": ["senior", "lead"]}}, {"term": {"remote": True}}]}
    body = SearchRequest.model_validate({"query": "nurse", "filter": tree})
    assert body.filter == tree  # as sent
    assert body.parsed_filter == parse_filter(tree)  # what the index applies
    assert SearchRequest.model_validate({"query": "nurse"}).parsed_filter is None
    other = SearchRequest.model_validate({"query": "nurse", "filter": {"term": {"remote": False}}})
    assert other.parsed_filter != body.parsed_filter
