"""The filter parser at its boundary: bad trees raise a ``FilterError`` naming the path, and any
JSON at all (deep, huge, odd keys, odd numbers) raises nothing else, with a bounded message.

Run: ``pytest -q tests/unit/test_filters_fuzz.py``
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebr.index.query.filters import (
    MAX_DEPTH,
    MAX_NODES,
    MAX_REASON,
    MAX_SHOWN,
    OPERATORS,
    RANGE_FIELDS,
    RANGE_OPS,
    TERM_FIELDS,
    FilterError,
    parse_filter,
)

# "filter" + MAX_DEPTH + 1 levels of ".and[255]" + a leaf's ".range." + one shown key + "[9999]"
MAX_PATH = 6 + (MAX_DEPTH + 1) * 9 + 7 + MAX_SHOWN + 6


def _nest(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"term": {"remote": True}}
    for _ in range(depth - 1):
        node = {"not": node}
    return node


BAD = [
    ([1], "filter", "expected an object with one operator"),
    ({"term": {"remote": True}, "not": {}}, "filter", "exactly one operator"),
    ({"and": [{"term": {"remote": True}}, {"rang": {}}]}, "filter.and[1].rang",
     "unknown operator 'rang'"),
    ({"and": []}, "filter.and", "non-empty list"),
    ({"or": {"term": {}}}, "filter.or", "non-empty list"),
    ({"term": {"colour": "red"}}, "filter.term.colour", "unknown term field 'colour'"),
    ({"term": {"posted_at": 1}}, "filter.term.posted_at", "use range for it"),
    ({"term": {"remote": "yes"}}, "filter.term.remote", "expected true or false"),
    ({"term": {"city": ["Oslo", 3]}}, "filter.term.city[1]", "expected a string, got 3 (int)"),
    ({"term": {"city": []}}, "filter.term.city", "non-empty list"),
    ({"range": {"seniority": {"gte": 1}}}, "filter.range.seniority", "use term for it"),
    ({"and": [{"term": {"active": True}}, {"range": {"posted_at": {"gte": "last week"}}}]},
     "filter.and[1].range.posted_at.gte", "ISO-8601"),
    ({"range": {"posted_at": {"after": 5}}}, "filter.range.posted_at.after", "unknown operator"),
    ({"range": {"posted_at": {}}}, "filter.range.posted_at", "at least one of"),
    ({"range": {"lat": {"gt": 1, "gte": 2}}}, "filter.range.lat", "at most one of gte / gt"),
    ({"range": {"lat": {"lt": 95}}}, "filter.range.lat.lt", "[-90, 90]"),
    ({"range": {"lon": {"lt": True}}}, "filter.range.lon.lt", "expected a finite number"),
    ({"geo_radius": {"lat": 91, "lon": 0, "km": 5}}, "filter.geo_radius.lat", "[-90, 90]"),
    ({"geo_radius": {"lat": 0, "lon": 0, "km": 0}}, "filter.geo_radius.km", "(0, 20040]"),
    ({"geo_radius": {"lat": 0, "lon": 0, "km": 30000}}, "filter.geo_radius.km", "(0, 20040]"),
    ({"geo_radius": {"lat": 0, "lon": 0}}, "filter.geo_radius.km", "missing"),
    ({"geo_radius": {"lat": 0, "lon": 0, "km": 1, "r": 2}}, "filter.geo_radius.r", "unknown key"),
    ({"geo_radius": {"lat": "0", "lon": 0, "km": 1}}, "filter.geo_radius.lat", "finite number"),
    ({"geo_bbox": {"min_lat": 10, "max_lat": 0, "min_lon": 0, "max_lon": 1}},
     "filter.geo_bbox.min_lat", "min_lat <= max_lat"),
    ({"geo_bbox": {"min_lat": 0, "max_lat": 1, "min_lon": -181, "max_lon": 1}},
     "filter.geo_bbox.min_lon", "[-180, 180]"),
    (_nest(MAX_DEPTH + 1), "filter" + ".not" * MAX_DEPTH, f"at most {MAX_DEPTH} deep"),
    ({"or": [{"term": {"remote": True}}] * MAX_NODES}, f"filter.or[{MAX_NODES - 1}]",
     f"at most {MAX_NODES} nodes"),
]  # fmt: skip


@pytest.mark.parametrize(("expr", "path", "message"), BAD)
def test_parse_errors_name_the_path(expr: Any, path: str, message: str) -> None:
    with pytest.raises(FilterError) as err:
        parse_filter(expr)
    assert err.value.path == path
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_limits_are_inclusive() -> None:
    parse_filter(_nest(MAX_DEPTH))
    parse_filter({"or": [{"term": {"remote": True}}] * (MAX_NODES - 1)})


def check(tree: Any) -> FilterError | None:
    """Parse ``tree``: a valid one round-trips through JSON, a bad one raises only FilterError,
    and its message stays bounded whatever the input's size; returns the error, if any."""
    try:
        flt = parse_filter(tree)
    except FilterError as err:
        assert len(err.path) <= MAX_PATH, err.path[:1000]
        assert str(err).startswith(f"{err.path}: ")
        assert len(str(err)) <= len(err.path) + 2 + MAX_REASON
        return err
    assert parse_filter(json.loads(json.dumps(flt.to_json()))) == flt
    return None


# ---- regressions: each kind of hostile input, at sizes that broke or would break a naive parser
def _deep_list(depth: int) -> Any:
    value: Any = "Oslo"
    for _ in range(depth):  # iteratively: building it must not need the recursion it tests
        value = [value]
    return value


def _deep_dict(depth: int, key: str) -> Any:
    value: Any = {}
    for _ in range(depth):
        value = {key: value}
    return value


MB = "x" * 2**20
HOSTILE: dict[str, Callable[[], Any]] = {
    "term value 960 lists deep": lambda: {"term": {"city": _deep_list(960)}},
    "term value 100k lists deep": lambda: {"term": {"city": _deep_list(100_000)}},
    "100k-deep list among term values": lambda: {"term": {"city": ["Oslo", _deep_list(10**5)]}},
    "and child 100k lists deep": lambda: {"and": [_deep_list(100_000)]},
    "not nested 100k deep": lambda: _deep_dict(100_000, "not"),
    "unknown operator nested 100k deep": lambda: _deep_dict(100_000, "a"),
    "geo value 100k dicts deep": lambda: {"geo_radius": {"lat": _deep_dict(10**5, "a")}},
    "1 MB string value": lambda: {"term": {"remote": MB}},
    "1 MB timestamp": lambda: {"range": {"posted_at": {"gte": "2026-10-01T00:00Z" + MB}}},
    "1 MB operator": lambda: {MB: {}},
    "1 MB term field": lambda: {"term": {MB: "Oslo"}},
    "1 MB range operator": lambda: {"range": {"lat": {MB: 1}}},
    "1 MB geo key": lambda: {"geo_radius": {"lat": 0, "lon": 0, "km": 1, MB: 1}},
    "1 MB key beside another": lambda: {"term": {"remote": True}, MB: 1},
    "100k keys in one object": lambda: {f"k{i}": i for i in range(100_000)},
    "100k fields in a term": lambda: {"term": {f"k{i}": i for i in range(100_000)}},
    "100k operators in a range": lambda: {"range": {"lat": {f"k{i}": 1 for i in range(10**5)}}},
    "too many term values": lambda: {"term": {"city": ["Oslo"] * 1_000_000}},
    "keys of mixed types": lambda: {1: 0, "a": 1, None: 2},
    "an int operator": lambda: {1: {"term": {"remote": True}}},
    "a tuple geo key": lambda: {"geo_radius": {"lat": 0, "lon": 0, "km": 1, ("a",): 1}},
    "a 5,000-digit int bound": lambda: {"range": {"lat": {"gte": 10**5000}}},
    "a 5,000-digit int operator": lambda: {"range": {"lat": {10**5000: 1}}},
    "a 5,000-digit int term value": lambda: {"term": {"city": -(10**5000)}},
    "a 10**400 coordinate": lambda: {"geo_radius": {"lat": 10**400, "lon": 0, "km": 1}},
    "a nan bound": lambda: {"range": {"lon": {"lt": float("nan")}}},
    "an inf timestamp": lambda: {"range": {"posted_at": {"gt": float("inf")}}},
    "a -inf radius": lambda: {"geo_radius": {"lat": 0, "lon": 0, "km": float("-inf")}},
    "a bool coordinate": lambda: {"geo_bbox": {"min_lat": 0, "min_lon": 0, "max_lat": 1,
                                               "max_lon": False}},
    "NUL in a timestamp": lambda: {"range": {"posted_at": {"gte": "2026-01-01\x00"}}},
    "a lone surrogate timestamp": lambda: {"range": {"posted_at": {"gte": "\ud800"}}},
    "year 10000": lambda: {"range": {"posted_at": {"gte": "10000-01-01T00:00:00"}}},
    "escape codes in a key": lambda: {"\x1b[31m\n": 1},
    "an object that is no JSON": lambda: {"term": {"city": object()}},
}  # fmt: skip


@pytest.mark.parametrize("build", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_input_raises_a_bounded_filter_error(build: Callable[[], Any]) -> None:
    assert check(build()) is not None


def test_a_deep_term_value_names_its_path() -> None:
    err = check({"and": [{"term": {"city": ["Oslo", _deep_list(960)]}}]})
    assert err is not None and err.path == "filter.and[0].term.city[1]"
    assert "expected a string, got [[[...]]] (list)" in str(err)


@pytest.mark.parametrize(
    "stamp", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "2026-10-01"]
)
def test_timestamps_at_the_calendars_ends_parse(stamp: str) -> None:
    assert check({"range": {"posted_at": {"gte": stamp}}}) is None


# ---- fuzz: arbitrary JSON, and trees that are nearly valid so the fuzzer reaches the leaves
GEO_KEYS = ("lat", "lon", "km", "min_lat", "min_lon", "max_lat", "max_lon")
names = st.sampled_from(OPERATORS + TERM_FIELDS + RANGE_FIELDS + RANGE_OPS + GEO_KEYS)
keys = st.one_of(names, st.text(max_size=8))
odd_text = st.sampled_from(
    ["", "\x00", "\ud800", "2026-10-01T00:00:00Z", "2026-13-01", "10000-01-01", "x" * 500]
)
# Over 4,300 digits an int's repr raises, so hypothesis must not print one: build it in a map.
huge = st.one_of(
    st.sampled_from([2**63, 10**300, 10**400, -(10**400)]),
    st.integers(4301, 5000).map(lambda digits: (-1) ** digits * 10**digits),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), huge, st.floats(), st.text(max_size=12), odd_text
)
any_json = st.recursive(
    scalars,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(keys, kids, max_size=4)),
    max_leaves=24,
)
# Python callers (not JSON) may pass non-string keys and tuples.
any_python = st.recursive(
    scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=3).map(tuple),
        st.dictionaries(st.one_of(keys, st.integers(), st.none(), huge), kids, max_size=3),
    ),
    max_leaves=12,
)
# Mostly well-formed pieces (so the fuzzer reaches every leaf's checks), some of anything.
number = st.one_of(st.floats(-90, 90), st.integers(-90, 90), st.floats(-200, 200), scalars)
term_field = st.one_of(st.sampled_from(TERM_FIELDS), keys)
term_value = st.one_of(
    st.sampled_from(["Oslo", "tech", True, False]), st.lists(st.text(max_size=4)), scalars
)
term = st.builds(lambda f, v: {"term": {f: v}}, term_field, term_value)
range_field = st.one_of(st.sampled_from(RANGE_FIELDS), keys)
range_op = st.one_of(st.sampled_from(RANGE_OPS), keys)
bound = st.one_of(number, odd_text)
range_ops = st.dictionaries(range_op, bound, min_size=1, max_size=2) | any_json
range_ = st.builds(lambda f, ops: {"range": {f: ops}}, range_field, range_ops)
radius = st.fixed_dictionaries({k: number for k in ("lat", "lon", "km")}).map(
    lambda b: {"geo_radius": b}
)
bbox = st.fixed_dictionaries({k: number for k in GEO_KEYS[3:]}).map(lambda b: {"geo_bbox": b})
near_valid = st.recursive(
    st.one_of(term, term, range_, range_, radius, bbox, any_json),
    lambda kids: st.one_of(
        st.lists(kids, min_size=1, max_size=4).map(lambda c: {"and": c}),
        st.lists(kids, max_size=4).map(lambda c: {"or": c}),
        kids.map(lambda c: {"not": c}),
        st.dictionaries(names, kids, min_size=1, max_size=2),
    ),
    max_leaves=16,
)
fuzz = settings(
    max_examples=500,
    deadline=None,
    derandomize=True,  # a fixed walk: CI is stable, and a found bug becomes a HOSTILE case
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@fuzz
@given(tree=st.one_of(any_json, any_python))
def test_any_value_parses_or_raises_a_bounded_filter_error(tree: Any) -> None:
    check(tree)


@fuzz
@given(tree=near_valid)
def test_nearly_valid_trees_parse_or_raise_a_bounded_filter_error(tree: Any) -> None:
    check(tree)
