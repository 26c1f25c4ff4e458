"""Columnar job attributes of one slot, indexed so a filter leaf costs O(matches), not O(n).

Built once per slot (``AttributeTable.from_items(slot.items)``; ~2 s at 1M rows):

- categorical fields (``filters.TERM_FIELDS``): dictionary-encoded posting lists, value ->
  ascending row ids, so ``term`` gathers only the matching rows;
- numeric fields (``posted_at`` as int64 epoch seconds, ``lat``, ``lon``): values sorted once,
  so ``range`` is two ``searchsorted`` calls plus the row ids between them;
- geo: an H3 cell index (resolution 4, ~45 km between cell centres: a 10-200 km job-search
  radius spans 1-5 rings). Every non-empty cell keeps its centre, the farthest of its rows from
  that centre, and its rows' lat/lon box. A geo leaf picks candidate cells, accepts whole cells
  that lie inside the shape, and runs the exact test only on rows of cells on the shape's edge.

Rows with a null attribute are in no posting list, sorted column or cell, so they never match.
Longitude is kept in (-180, 180]: -180 is stored as 180, the same meridian (``filters`` says
how a bound at -180 or 180 reads), so one meridian is never two places in a sorted column.

Size: one table type with an index per attribute kind (categorical, numeric, geo, text) behind
one lookup interface.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import h3.api.numpy_int as h3
import numpy as np
import pandas as pd

from ebr.data.geo import haversine_km
from ebr.index.query.filters import (
    BOOL_FIELDS,
    RANGE_FIELDS,
    TERM_FIELDS,
    And,
    Filter,
    GeoBBox,
    GeoRadius,
    Not,
    Or,
    Range,
    Term,
)

CELL_RES = 4
# Slack for float error in haversine (worst near antipodes, ~1e-4 km): cell-level shortcuts
# only decide when they are this sure; anything closer is settled row by row.
GEO_EPS_KM = 0.01
# An H3 disk cell costs ~5 us of Python-level h3 calls, a scanned cell centre ~50 ns of
# vectorised haversine (measured at 1M rows): take the disk only when it is this much smaller.
DISK_CELL_COST = 100


@dataclass(frozen=True)
class _Postings:
    codes: dict[Any, int]  # value -> code
    offsets: np.ndarray  # int64 [n_values + 1]: rows of code c are rows[offsets[c]:offsets[c+1]]
    rows: np.ndarray  # int64 [non-null rows], grouped by code, ascending within a code


@dataclass(frozen=True)
class _Cells:
    ids: np.ndarray  # uint64 [m] sorted H3 cells holding at least one row
    offsets: np.ndarray  # int64 [m + 1] into rows
    rows: np.ndarray  # int64 [geo rows], grouped by cell, ascending within a cell
    lat: np.ndarray  # float64 [m] cell centres
    lon: np.ndarray
    reach_km: np.ndarray  # float64 [m] farthest row of the cell from its centre
    box: np.ndarray  # float64 [m, 4] min_lat, max_lat, min_lon, max_lon of the cell's rows


def _gather(offsets: np.ndarray, rows: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Concatenate ``rows[offsets[g]:offsets[g+1]]`` for each g in ``groups`` (vectorised)."""
    starts, lens = offsets[groups], offsets[groups + 1] - offsets[groups]
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    shift = np.repeat(starts - (np.cumsum(lens) - lens), lens)
    return rows[shift + np.arange(total)]


def _group(keys: np.ndarray, valid: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the rows where ``valid``, grouped by ``keys`` (ints in [0, n_groups))."""
    rows = np.flatnonzero(valid)
    # Stable keeps rows ascending within a group; small ints take numpy's radix sort.
    small = np.int16 if n_groups < 2**15 else np.int64
    order = np.argsort(keys[rows].astype(small), kind="stable")
    counts = np.bincount(keys[rows], minlength=n_groups)
    offsets = np.zeros(n_groups + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets, rows[order].astype(np.int64)


def _postings(column: pd.Series) -> _Postings:
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    offsets, rows = _group(codes, codes >= 0, len(uniques))
    # .item(): numpy scalars -> Python str/bool, so a dict lookup with a JSON value hits.
    keys = [u.item() if isinstance(u, np.generic) else u for u in uniques]
    return _Postings({k: i for i, k in enumerate(keys)}, offsets, rows)


def _epoch_seconds(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(int64 [n] whole epoch seconds, bool [n] not-null) of a timestamp column."""
    ts = pd.to_datetime(column, utc=True)
    valid = ts.notna().to_numpy()
    ns = ts.dt.tz_convert(None).to_numpy("datetime64[ns]").astype(np.int64)
    return np.where(valid, np.floor_divide(ns, 10**9), 0), valid


def _cells(lat: np.ndarray, lon: np.ndarray, res: int) -> _Cells:
    valid = ~(np.isnan(lat) | np.isnan(lon))
    # Jobs sit in far fewer places than rows (cities): locate each distinct point once.
    # Hash factorisation (O(n)) of the (lat, lon) pair; np.unique(axis=0) sorts, 10x slower.
    lat_code, lat_u = pd.factorize(lat[valid])
    lon_code, lon_u = pd.factorize(lon[valid])
    pt_code, pt_u = pd.factorize(lat_code.astype(np.int64) * len(lon_u) + lon_code)
    pts = zip(lat_u[pt_u // len(lon_u)].tolist(), lon_u[pt_u % len(lon_u)].tolist(), strict=True)
    pt_cells = np.array([h3.latlng_to_cell(a, b, res) for a, b in pts], dtype=np.uint64)
    ids, cell_of_pt = np.unique(pt_cells, return_inverse=True)
    keys = np.zeros(len(lat), np.int64)
    keys[valid] = cell_of_pt[pt_code]
    offsets, rows = _group(keys, valid, len(ids))
    centres = np.array([h3.cell_to_latlng(c) for c in ids.tolist()], dtype=np.float64)
    centres = centres.reshape(-1, 2)
    cell_of_row = np.repeat(np.arange(len(ids)), np.diff(offsets))
    dist = haversine_km(centres[cell_of_row, 0], centres[cell_of_row, 1], lat[rows], lon[rows])
    box, reach = np.zeros((0, 4)), np.zeros(0)
    if len(rows):  # reduceat needs at least one group
        starts = offsets[:-1]
        reach = np.maximum.reduceat(dist, starts)
        cols = [f.reduceat(c[rows], starts) for c in (lat, lon) for f in (np.minimum, np.maximum)]
        box = np.stack(cols, axis=1)
    return _Cells(ids, offsets, rows, centres[:, 0], centres[:, 1], reach, box)


def _km_from(lat: float, lon: float, lats: np.ndarray, lons: np.ndarray) -> np.ndarray:
    """Great-circle km from one point to many (float64 [len(lats)])."""
    return haversine_km(np.asarray(lat), np.asarray(lon), lats, lons)


def _min_km_to_cells(lat: float, lon: float, cells: np.ndarray) -> float:
    """Lower bound of the km from (lat, lon) to any point of ``cells``."""
    # Cell edges are great-circle arcs, so a cell's farthest point from its centre is a vertex.
    best = math.inf
    for c in cells.tolist():
        clat, clon = h3.cell_to_latlng(c)
        verts = np.asarray(h3.cell_to_boundary(c))
        circum = float(_km_from(clat, clon, verts[:, 0], verts[:, 1]).max())
        best = min(best, float(_km_from(lat, lon, np.asarray(clat), np.asarray(clon))) - circum)
    return best


@dataclass(frozen=True, eq=False)
class AttributeTable:
    """The filterable attributes of ``n`` items (row i = FAISS id i). Read-only once built."""

    n: int
    postings: dict[str, _Postings]
    sorted_values: dict[str, tuple[np.ndarray, np.ndarray]]  # field -> (values, rows), nulls out
    lat: np.ndarray  # float64 [n], NaN = unknown
    lon: np.ndarray
    cells: _Cells
    res: int

    @classmethod
    def from_items(cls, items: pd.DataFrame, res: int = CELL_RES) -> AttributeTable:
        """Index a slot's items (``ebr.release.slots.SLOT_COLUMNS``); row order is kept.

        Raises:
            ValueError: a filterable column is missing, or a lat/lon lies outside the globe.
        """
        missing = [c for c in TERM_FIELDS + RANGE_FIELDS if c not in items.columns]
        if missing:
            raise ValueError(f"items lack the filterable columns {missing}")
        for field in BOOL_FIELDS:
            col = items[field]
            if col.notna().all() and not pd.api.types.is_bool_dtype(col.dtype):
                raise ValueError(f"items column {field!r} must be boolean, got {col.dtype}")
        lat = items["lat"].to_numpy(np.float64, na_value=np.nan)
        lon = items["lon"].to_numpy(np.float64, na_value=np.nan)
        for name, col, lim in (("lat", lat, 90.0), ("lon", lon, 180.0)):
            bad = np.flatnonzero(np.abs(col) > lim)
            if len(bad):
                raise ValueError(f"items row {bad[0]} has {name}={col[bad[0]]}, outside ±{lim:g}")
        lon = np.where(lon == -180.0, 180.0, lon)
        posted, posted_ok = _epoch_seconds(items["posted_at"])
        sorted_values = {}
        numeric = {"posted_at": (posted, posted_ok), "lat": (lat, ~np.isnan(lat))}
        for field, (values, valid) in {**numeric, "lon": (lon, ~np.isnan(lon))}.items():
            rows = np.flatnonzero(valid)
            rows = rows[np.argsort(values[rows], kind="stable")].astype(np.int64)
            sorted_values[field] = (values[rows], rows)
        return cls(
            n=len(items),
            postings={f: _postings(items[f]) for f in TERM_FIELDS},
            sorted_values=sorted_values,
            lat=lat,
            lon=lon,
            cells=_cells(lat, lon, res),
            res=res,
        )

    def mask(self, flt: Filter) -> np.ndarray:
        """Evaluate ``flt`` (the one evaluator of filter trees): bool [n], True where the row
        passes."""
        match flt:
            case And(children=children):
                return np.logical_and.reduce([self.mask(c) for c in children])
            case Or(children=children):
                return np.logical_or.reduce([self.mask(c) for c in children])
            case Not(child=child):
                return ~self.mask(child)
            case Term(field=field, values=values):
                return self.rows_mask(self.term_rows(field, values))
            case Range():
                lo, lo_inc = (flt.gte, True) if flt.gte is not None else (flt.gt, False)
                hi, hi_inc = (flt.lte, True) if flt.lte is not None else (flt.lt, False)
                return self.rows_mask(self.range_rows(flt.field, lo, lo_inc, hi, hi_inc))
            case GeoRadius(lat=lat, lon=lon, km=km):
                return self.rows_mask(self.radius_rows(lat, lon, km))
            case GeoBBox():
                box = (flt.min_lat, flt.min_lon, flt.max_lat, flt.max_lon)
                return self.rows_mask(self.bbox_rows(*box))
        raise TypeError(f"not a filter node: {type(flt).__name__}")

    def rows_mask(self, rows: np.ndarray) -> np.ndarray:
        """bool [n] with ``rows`` set."""
        out = np.zeros(self.n, dtype=bool)
        out[rows] = True
        return out

    def term_rows(self, field: str, values: Sequence[str | bool]) -> np.ndarray:
        """Rows whose ``field`` equals one of ``values`` (int64; O(matches))."""
        post = self.postings[field]
        codes = np.array([post.codes[v] for v in values if v in post.codes], dtype=np.int64)
        return _gather(post.offsets, post.rows, codes)

    def range_rows(
        self, field: str, lo: float | None, lo_inc: bool, hi: float | None, hi_inc: bool
    ) -> np.ndarray:
        """Rows with ``lo <(=) field <(=) hi`` (a None bound is open); O(log n + matches)."""
        values, rows = self.sorted_values[field]
        if values.dtype.kind == "i":
            # Integer column: equivalent inclusive int bounds (a float probe would make numpy
            # cast the whole column), clipped so an absurd bound cannot overflow int64.
            big = 2**62
            if lo is not None:
                lo = min(max(math.ceil(lo) if lo_inc else math.floor(lo) + 1, -big), big)
            if hi is not None:
                hi = min(max(math.floor(hi) if hi_inc else math.ceil(hi) - 1, -big), big)
            lo_inc = hi_inc = True
        lo_side: Literal["left", "right"] = "left" if lo_inc else "right"
        hi_side: Literal["left", "right"] = "right" if hi_inc else "left"
        start = 0 if lo is None else int(np.searchsorted(values, lo, lo_side))
        end = len(values) if hi is None else int(np.searchsorted(values, hi, hi_side))
        end = max(start, end)
        seam_lo = lo is None or lo < -180 or (lo_inc and lo == -180)
        if field == "lon" and seam_lo and (hi is None or hi > -180 or (hi_inc and hi == -180)):
            # -180 is in range and its rows are stored as 180 (the sorted tail): add them too.
            tail = int(np.searchsorted(values, 180.0, "left"))
            return np.concatenate([rows[start:end], rows[tail:]]) if end < tail else rows[start:]
        return rows[start:end]

    def radius_rows(self, lat: float, lon: float, km: float, via: str = "auto") -> np.ndarray:
        """Rows within ``km`` great-circle km of (lat, lon).

        ``via`` picks how candidate cells are found: "disk" (H3 rings around the centre),
        "scan" (distance to every non-empty cell centre) or "auto" (the cheaper). Both are
        exact; tests force each.
        """
        c = self.cells
        if via not in ("auto", "disk", "scan"):
            raise ValueError(f"via must be auto, disk or scan, got {via!r}")
        cand = None if via == "scan" else self._disk_cells(lat, lon, km, force=via == "disk")
        cand = np.arange(len(c.ids)) if cand is None else cand
        d = _km_from(lat, lon, c.lat[cand], c.lon[cand])
        # Triangle inequality: a row at most reach_km from its cell centre.
        inside = cand[d + c.reach_km[cand] <= km - GEO_EPS_KM]
        edge = cand[
            (d - c.reach_km[cand] <= km + GEO_EPS_KM) & (d + c.reach_km[cand] > km - GEO_EPS_KM)
        ]
        rows = _gather(c.offsets, c.rows, edge)
        rows = rows[_km_from(lat, lon, self.lat[rows], self.lon[rows]) <= km]
        return np.concatenate([_gather(c.offsets, c.rows, inside), rows])

    def _disk_cells(self, lat: float, lon: float, km: float, force: bool) -> np.ndarray | None:
        """Indices of non-empty cells in an H3 disk proven to hold every point within ``km``,
        or None when scanning all non-empty cells is cheaper.

        Proof: grid distance changes by at most one between cells a path crosses, so a point
        within ``km`` but outside disk(k) would have a path of length <= km through ring k+1;
        we grow k until every cell of ring k+1 lies farther than ``km``.
        """
        m = len(self.cells.ids)
        spacing = math.sqrt(3) * h3.average_hexagon_edge_length(self.res, "km")
        k = math.ceil(km / spacing)
        centre = h3.latlng_to_cell(lat, lon, self.res)
        while True:
            if not force and (3 * k * (k + 1) + 1) * DISK_CELL_COST >= m:
                return None
            ring = h3.grid_ring(centre, k + 1)
            if len(ring) == 0 or _min_km_to_cells(lat, lon, ring) > km + GEO_EPS_KM:
                break
            k += max(1, k // 4)
        return _hits(self.cells.ids, h3.grid_disk(centre, k).astype(np.uint64))

    def bbox_rows(
        self, min_lat: float, min_lon: float, max_lat: float, max_lon: float
    ) -> np.ndarray:
        """Rows inside the box; ``min_lon > max_lon`` wraps across the antimeridian."""
        if (min_lon, max_lon) != (-180.0, 180.0):  # the full-width box is already exact
            # A -180 bound means the stored 180: [-180, x] becomes the wrapping [180, x], and
            # [x, -180] (wrapping) the plain [x, 180]; the comparisons below are then exact.
            min_lon, max_lon = (180.0 if b == -180.0 else b for b in (min_lon, max_lon))
        c, box = self.cells, self.cells.box
        wraps = min_lon > max_lon

        def lon_in(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
            # [lo, hi] inside the box's longitudes (lo == hi: one point); wrapping boxes are the
            # union of [min_lon, 180] and [-180, max_lon].
            if wraps:
                return (lo >= min_lon) | (hi <= max_lon)
            return (lo >= min_lon) & (hi <= max_lon)

        def lon_meets(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
            if wraps:
                return (hi >= min_lon) | (lo <= max_lon)
            return (hi >= min_lon) & (lo <= max_lon)

        inside = (box[:, 0] >= min_lat) & (box[:, 1] <= max_lat) & lon_in(box[:, 2], box[:, 3])
        meets = (box[:, 1] >= min_lat) & (box[:, 0] <= max_lat) & lon_meets(box[:, 2], box[:, 3])
        rows = _gather(c.offsets, c.rows, np.flatnonzero(meets & ~inside))
        la, lo = self.lat[rows], self.lon[rows]
        rows = rows[(la >= min_lat) & (la <= max_lat) & lon_in(lo, lo)]
        return np.concatenate([_gather(c.offsets, c.rows, np.flatnonzero(inside)), rows])


def _hits(sorted_ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions in ``sorted_ids`` of the ``wanted`` values present there."""
    pos = np.searchsorted(sorted_ids, wanted)
    ok = pos < len(sorted_ids)
    pos = pos[ok]
    return pos[sorted_ids[pos] == wanted[ok]]
