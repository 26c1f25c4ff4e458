"""Strict filters over job attributes: a JSON tree parsed into frozen dataclasses.

The HTTP API passes the tree through as-is; ``parse_filter`` is the boundary that validates it::

    filter := {"and": [filter, ...]} | {"or": [filter, ...]} | {"not": filter}
            | {"term": {FIELD: value | [value, ...]}}                  equality / membership
            | {"range": {NUM_FIELD: {"gte"|"gt"|"lte"|"lt": bound, ...}}}
            | {"geo_radius": {"lat": deg, "lon": deg, "km": km}}       great-circle distance
            | {"geo_bbox": {"min_lat": deg, "min_lon": deg, "max_lat": deg, "max_lon": deg}}

    FIELD:     seniority industry company employment_type country city (strings),
               remote active (true/false)
    NUM_FIELD: posted_at (ISO-8601 string, naive = UTC, or epoch seconds), lat, lon

Semantics: a row whose attribute is null never matches a ``term``, ``range`` or geo leaf; ``not``
is the plain complement (so ``not term`` matches nulls). ``posted_at`` is compared in whole
seconds (the sub-second part of a job's timestamp is dropped). A bbox with ``min_lon > max_lon``
crosses the antimeridian. ``AttributeTable.mask(parse_filter(tree))`` evaluates a tree.

Longitudes -180 and 180 are one meridian: a job there matches a ``geo_bbox`` or a ``range`` on
``lon`` when either -180 or 180 would, so a box ending at max_lon=180 holds a job at lon=-180,
``{"lte": -170}`` holds a job at 180, and ``{"min_lon": -180, "max_lon": 180}`` is the whole
Earth, not one meridian; ``{"gt": -180, "lt": 180}`` leaves it out (neither end is admitted).

Errors: anything that is not a valid filter raises ``FilterError`` (a ValueError) whose message
echoes at most ``MAX_SHOWN`` chars of any untrusted value or key, ``MAX_REASON`` chars in all.

Size: the filter grammar's dataclasses and their one parser (each leaf validated with its JSON
path in the message).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any

STRING_FIELDS = ("seniority", "industry", "company", "employment_type", "country", "city")
BOOL_FIELDS = ("remote", "active")
TERM_FIELDS = STRING_FIELDS + BOOL_FIELDS
RANGE_FIELDS = ("posted_at", "lat", "lon")
RANGE_OPS = ("gte", "gt", "lte", "lt")
OPERATORS = ("and", "or", "not", "term", "range", "geo_radius", "geo_bbox")
MAX_DEPTH = 16  # deeper trees are machine-generated garbage and risk Python's recursion limit
MAX_NODES = 256  # bounds parse + evaluation cost per request (each node is one mask over n rows)
MAX_TERM_VALUES = 10_000  # a company allow-list is legitimately long; an unbounded one is not
MAX_KM = 20_040.0  # half the Earth's circumference: a larger radius is a typo, not a query
MAX_SHOWN = 60  # chars of one untrusted value or key an error echoes: a hint, not the request
MAX_REASON = 300  # chars of any error's reason, a backstop over the bounded parts it is built of
_LAT = (-90.0, 90.0)
_LON = (-180.0, 180.0)


class FilterError(ValueError):
    """A bad filter expression; ``path`` locates it, e.g. ``filter.and[1].range.posted_at.gte``."""

    def __init__(self, path: str, reason: str) -> None:
        reason = reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."
        super().__init__(f"{path}: {reason}")
        self.path = path


class Filter(ABC):
    """Base of every filter node (frozen dataclasses below): plain data, evaluated by one
    evaluator, ``ebr.index.query.attributes.AttributeTable.mask``."""

    @abstractmethod
    def to_json(self) -> dict[str, Any]:
        """The JSON tree ``parse_filter`` reads back into an equal filter."""


@dataclass(frozen=True)
class And(Filter):
    children: tuple[Filter, ...]

    def to_json(self) -> dict[str, Any]:
        return {"and": [c.to_json() for c in self.children]}


@dataclass(frozen=True)
class Or(Filter):
    children: tuple[Filter, ...]

    def to_json(self) -> dict[str, Any]:
        return {"or": [c.to_json() for c in self.children]}


@dataclass(frozen=True)
class Not(Filter):
    child: Filter

    def to_json(self) -> dict[str, Any]:
        return {"not": self.child.to_json()}


@dataclass(frozen=True)
class Term(Filter):
    field: str  # one of TERM_FIELDS
    values: tuple[str | bool, ...]  # match any; str for STRING_FIELDS, bool for BOOL_FIELDS

    def to_json(self) -> dict[str, Any]:
        value = self.values[0] if len(self.values) == 1 else list(self.values)
        return {"term": {self.field: value}}


@dataclass(frozen=True)
class Range(Filter):
    field: str  # one of RANGE_FIELDS; posted_at bounds are epoch seconds
    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None

    def to_json(self) -> dict[str, Any]:
        # Whole floats as ints (epoch seconds read better); parse turns them back into floats.
        ops = {op: getattr(self, op) for op in RANGE_OPS if getattr(self, op) is not None}
        return {"range": {self.field: {o: int(v) if v.is_integer() else v for o, v in ops.items()}}}


@dataclass(frozen=True)
class GeoRadius(Filter):
    lat: float  # degrees
    lon: float  # degrees
    km: float  # great-circle radius, (0, MAX_KM]

    def to_json(self) -> dict[str, Any]:
        return {"geo_radius": asdict(self)}


@dataclass(frozen=True)
class GeoBBox(Filter):
    min_lat: float
    min_lon: float  # min_lon > max_lon: the box crosses the antimeridian
    max_lat: float
    max_lon: float

    def to_json(self) -> dict[str, Any]:
        return {"geo_bbox": asdict(self)}


def _show(value: Any, level: int = 2) -> str:
    """``repr(value)`` in at most MAX_SHOWN chars, ``level`` containers deep, at a cost bounded
    by that too: ``repr`` itself recurses through a value nested 100k deep, copies a megabyte
    string or 100k keys before any cut, and raises on an int of over 4,300 digits."""
    if isinstance(value, str):
        text = repr(value[:MAX_SHOWN]) + ("..." if len(value) > MAX_SHOWN else "")
    elif isinstance(value, bool) or value is None:
        text = repr(value)
    elif isinstance(value, int):
        bits = value.bit_length()
        text = int.__repr__(value) if bits <= 128 else f"<{'-' * (value < 0)}{bits}-bit int>"
    elif isinstance(value, float):
        text = float.__repr__(value)
    elif isinstance(value, dict):
        shown = islice(value.items(), 3 if level > 0 else 0)
        parts = [f"{_show(k, 0)}: {_show(v, level - 1)}" for k, v in shown]
        text = "{" + ", ".join(parts + ["..."] * (len(value) > len(parts))) + "}"
    elif isinstance(value, list | tuple):
        parts = [_show(v, level - 1) for v in islice(value, 3 if level > 0 else 0)]
        text = "[" + ", ".join(parts + ["..."] * (len(value) > len(parts))) + "]"
    else:  # not JSON: a Python caller's object, whose own repr may be anything
        text = f"<{type(value).__name__[:MAX_SHOWN]}>"
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def _kind(value: Any) -> str:
    return f"{_show(value)} ({type(value).__name__[:MAX_SHOWN]})"


def _key(key: Any) -> str:
    """A request's key as a path component: as is when short and printable, else its _show."""
    ok = isinstance(key, str) and len(key) <= MAX_SHOWN and key.isprintable()
    return key if ok else _show(key)


def _object(value: Any, path: str, expected: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FilterError(path, f"expected {expected}, got {_kind(value)}")
    return value


def _single(obj: dict[Any, Any], path: str, what: str) -> tuple[str, Any]:
    if len(obj) != 1:
        raise FilterError(path, f"expected exactly one {what}, got {len(obj)}: {_show(obj, 1)}")
    ((key, value),) = obj.items()
    if not isinstance(key, str):  # JSON keys are strings; a Python caller's may not be
        raise FilterError(path, f"expected a string {what}, got {_kind(key)}")
    return key, value


def _number(value: Any, path: str, bounds: tuple[float, float] | None = None) -> float:
    # bool is an int subclass in Python; true/false as a coordinate is a client bug.
    number = isinstance(value, int | float) and not isinstance(value, bool)
    x = float(value) if number and abs(value) < 1e300 else math.nan  # 10**400 can't be a float
    if not math.isfinite(x):
        raise FilterError(path, f"expected a finite number, got {_kind(value)}")
    if bounds is not None and not bounds[0] <= x <= bounds[1]:
        raise FilterError(path, f"expected a value in [{bounds[0]:g}, {bounds[1]:g}], got {x:g}")
    return x


def _epoch_seconds(value: Any, path: str) -> float:
    if isinstance(value, str):
        try:
            ts = datetime.fromisoformat(value)
            return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()
        except (ValueError, OverflowError, OSError):  # bad text, or a date outside the calendar
            example = "an ISO-8601 timestamp like '2026-10-01T00:00:00Z' or epoch seconds"
            raise FilterError(path, f"expected {example}, got {_show(value)}") from None
    return _number(value, path)


def _field(body: Any, path: str, op: str) -> tuple[str, Any, str]:
    """(field, its value, its path) of a one-field ``term`` / ``range`` body."""
    fields, other = (TERM_FIELDS, "range") if op == "term" else (RANGE_FIELDS, "term")
    field, raw = _single(_object(body, path, f"an object {{field: ...}} for {op}"), path, "field")
    if field not in fields:
        hint = f"; use {other} for it" if field in TERM_FIELDS + RANGE_FIELDS else ""
        why = f"unknown {op} field {_show(field)}{hint}; expected one of {', '.join(fields)}"
        raise FilterError(f"{path}.{_key(field)}", why)
    return field, raw, f"{path}.{field}"


def _term(body: Any, path: str) -> Term:
    field, raw, path = _field(body, path, "term")
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise FilterError(path, "expected a value or a non-empty list of values, got []")
    if len(items) > MAX_TERM_VALUES:
        raise FilterError(path, f"expected at most {MAX_TERM_VALUES} values, got {len(items)}")
    want, expected = (bool, "true or false") if field in BOOL_FIELDS else (str, "a string")
    for i, item in enumerate(items):
        if not isinstance(item, want):
            item_path = f"{path}[{i}]" if isinstance(raw, list) else path
            raise FilterError(item_path, f"expected {expected}, got {_kind(item)}")
    return Term(field, tuple(dict.fromkeys(items)))  # dedupe, keep order


def _range(body: Any, path: str) -> Range:
    field, raw, path = _field(body, path, "range")
    ops = _object(raw, path, 'an object like {"gte": ..., "lt": ...}')
    if not ops:
        raise FilterError(path, f"expected at least one of {', '.join(RANGE_OPS)}, got {{}}")
    bounds: dict[str, float] = {}
    for op, value in ops.items():
        op_path = f"{path}.{_key(op)}"
        if op not in RANGE_OPS:
            why = f"unknown operator {_show(op)}; expected one of {', '.join(RANGE_OPS)}"
            raise FilterError(op_path, why)
        if field == "posted_at":
            bounds[op] = _epoch_seconds(value, op_path)
        else:
            bounds[op] = _number(value, op_path, _LAT if field == "lat" else _LON)
    for pair in (("gte", "gt"), ("lte", "lt")):
        if all(op in bounds for op in pair):
            raise FilterError(path, f"expected at most one of {pair[0]} / {pair[1]}, got both")
    return Range(field, **bounds)


def _fields(body: Any, path: str, keys: tuple[str, ...]) -> dict[str, Any]:
    obj, expected = _object(body, path, f"an object with {', '.join(keys)}"), ", ".join(keys)
    for key in obj:
        if key not in keys:
            why = f"unknown key {_show(key)}; expected {expected}"
            raise FilterError(f"{path}.{_key(key)}", why)
    for key in [k for k in keys if k not in obj]:
        raise FilterError(f"{path}.{key}", f"missing; expected {expected}")
    return obj


def _geo_radius(body: Any, path: str) -> GeoRadius:
    obj = _fields(body, path, ("lat", "lon", "km"))
    km = _number(obj["km"], f"{path}.km")
    if not 0 < km <= MAX_KM:
        raise FilterError(f"{path}.km", f"expected a radius in (0, {MAX_KM:g}] km, got {km:g}")
    lat = _number(obj["lat"], f"{path}.lat", _LAT)
    return GeoRadius(lat, _number(obj["lon"], f"{path}.lon", _LON), km)


def _geo_bbox(body: Any, path: str) -> GeoBBox:
    obj = _fields(body, path, ("min_lat", "min_lon", "max_lat", "max_lon"))
    v = {k: _number(x, f"{path}.{k}", _LAT if k.endswith("lat") else _LON) for k, x in obj.items()}
    if v["min_lat"] > v["max_lat"]:
        got = f"got {v['min_lat']:g} > {v['max_lat']:g}"
        raise FilterError(f"{path}.min_lat", f"expected min_lat <= max_lat (only lon wraps), {got}")
    return GeoBBox(**v)


def _parse(obj: Any, path: str, depth: int, count: list[int]) -> Filter:
    count[0] += 1
    if count[0] > MAX_NODES:
        raise FilterError(path, f"expected at most {MAX_NODES} nodes in a filter, got more")
    if depth > MAX_DEPTH:
        raise FilterError(path, f"expected nesting at most {MAX_DEPTH} deep, got deeper")
    ops = ", ".join(OPERATORS)
    op, body = _single(_object(obj, path, f"an object with one operator ({ops})"), path, "operator")
    if op not in OPERATORS:
        why = f"unknown operator {_show(op)}; expected one of {ops}"
        raise FilterError(f"{path}.{_key(op)}", why)
    sub = f"{path}.{op}"
    if op in ("and", "or"):
        if not isinstance(body, list) or not body:
            raise FilterError(sub, f"expected a non-empty list of filters, got {_kind(body)}")
        kids = tuple(_parse(c, f"{sub}[{i}]", depth + 1, count) for i, c in enumerate(body))
        return And(kids) if op == "and" else Or(kids)
    if op == "not":
        return Not(_parse(body, sub, depth + 1, count))
    leaves = {"term": _term, "range": _range, "geo_radius": _geo_radius, "geo_bbox": _geo_bbox}
    return leaves[op](body, sub)


def parse_filter(obj: Any, path: str = "filter") -> Filter:
    """Validate a JSON filter tree and build its ``Filter``; a bad tree raises FilterError
    naming the offending node's ``path`` and what was expected there."""
    return _parse(obj, path, 1, [0])
