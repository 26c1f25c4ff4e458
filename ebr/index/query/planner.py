"""Filtered top-k search: exact over the eligible subset, or ANN with a selector, by selectivity.

Checked on every call: no returned row is ineligible; each query gets min(k, eligible) rows.

- ``ann``: no filter (or all rows eligible): the index's own probes, re-probing short queries.
- ``exact_subset``: eligible <= max(20k, 2% of n) and at most ``exact_max_selectivity`` of n
  (a dense mask is the ANN index's job: an exact scan of it costs what every row costs), or a
  flat index: scan only the eligible rows' exact vectors (``faiss.knn``; in place for a
  dense mask), exact results at a cost that grows with the eligible count. On 1M x 64 it
  out-ran IVF-PQ + bitmap up to 2-5% selectivity (2 threads, 1,000 queries;
  ``benchmarks/filtered_search.py``, crossover): hence 2%.
- ``ann_filtered``: FAISS with an ``IDSelectorBitmap`` (O(1) per check), rounds built by
  ``ebr.index.query.probing``. IVF: each query probes, nearest first, only cells holding eligible
  rows, until they hold as many as ``nprobe / selectivity**a`` cells would for a filter
  independent of the vectors; then, for a query whose nearest cells hold a smaller share of
  eligible rows than the catalogue (the filter correlates with it), every cell whose centroid
  score comes within a margin of the page's k-th score (how far rows stick out of their
  cells, measured on the index) is probed too. HNSW: efSearch * selectivity**-a, times the
  query's local deficit (its nearest rows hold fewer eligible ones than the selectivity
  predicts). Short pages get doubled probes, then exact answers.

A filter that correlates with the vectors (jobs in a region far from the member, other
industries than the query's) leaves each query only rows away from it: its nearest cells and
graph neighbours are ineligible, the first eligible rows met are not the best, and the pages
come back full but wrong. Without the safeguards below, recall@10 was 0.82 (IVF) and 0.19
(HNSW) on 50k clustered rows with only the far clusters eligible, 0.95-0.96 (IVF-PQ) and
0.22-0.45 (HNSW) on 1M jobs under region filters, while unfiltered recall passed the gate
(``benchmarks/filtered_search.py``). The safeguards, each reported in the ``Plan``:

- the IVF margin above (``widened_queries``);
- then, for those IVF queries, a bound instead of a statistic (``bounded_queries``): every
  unprobed cell whose widest row could still beat the page (``ebr.index.query.bound``) is
  scanned. The margin alone missed a job far from the eligible mass, in a cell ranked 100th+,
  for 29 of 30 queries (recall@10 0.89, ``tests/unit/test_planner_outliers.py``). The bound
  is loose on real embeddings: on 200k marketplace jobs ~28% of region-filter queries needed
  over ``exact_share`` of the eligible rows and went exact, batch throughput 1.6-5.9x below
  the margin alone (still above the exact scan); ``cone_bound="cheap"`` keeps the margin's
  page for those (1.15-1.4x), ``"off"`` the margin alone;
- exact instead of ANN where ANN would cost more or cannot work (``switched_queries``): IVF
  probes or bounded cells over ``exact_share`` of the eligible rows; an HNSW walk past
  ``max_ef_search``;
- a check on every filtered ANN page but the exact ones (IVF-Flat pages the bound completed):
  ``check_rows`` eligible rows scored exactly; a page one of them beats without being on it is
  answered exactly (``suspect_queries``). A sample rarely holds a lone outlier: hence the bound.

    scores, rows, plan = filtered_search(slot.index, slot.vectors, q, 10, table.mask(flt))

Size: the cost model, its calibration and the checked dispatch are one decision (which plan
answers a filtered query) and are tested as one.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from ebr.index.query import device
from ebr.index.query.exact import exact_masked
from ebr.index.query.graph import graph_rounds
from ebr.index.query.masks import mask_info
from ebr.index.query.params import PlannerParams, index_kind, search_params  # re-exported
from ebr.index.query.probing import empty_page, ivf_layout, ivf_rounds, suspects


@dataclass(frozen=True)
class Plan:
    """What ``filtered_search`` did (JSON-able with ``dataclasses.asdict``)."""

    strategy: str  # "ann" | "exact_subset" | "ann_filtered" | "exact_device" (query.device)
    n: int  # rows in the index
    eligible: int  # rows passing the filter
    selectivity: float  # eligible / n
    k: int
    nprobe: int | None = None  # IVF cells probed in round 1, fewest over queries (None: no IVF)
    nprobe_max: int | None = None  # ... and most (a query far from the eligible rows needs more)
    ef_search: int | None = None  # HNSW: most efSearch of a first-round walk (None: no walk)
    k_factor: float | None = None  # refine factor (IVFPQ + RFlat)
    rounds: int = 0  # ANN rounds run (0 for exact_subset)
    retried_queries: int = 0  # queries whose first-round page was short
    fallback_queries: int = 0  # queries answered by the exact scan after ANN (all causes)
    fallback: bool = False  # fallback_queries > 0
    widened_queries: int = 0  # IVF queries probed past round 1 because of the score margin
    nprobe_final: int | None = None  # most IVF cells a query probed over all rounds
    switched_queries: int = 0  # queries sent to exact before ANN could finish: it would cost more
    check_rows: int = 0  # eligible rows scored exactly to check the ANN pages (0: none)
    suspect_queries: int = 0  # pages the check showed to miss a better row: answered exactly
    bounded_queries: int = 0  # IVF pages completed by the cone bound over the unprobed cells


def _check_results(rows: np.ndarray, n: int, eligible: np.ndarray, need: int, what: str) -> None:
    """Internal invariants: only eligible, in-range, distinct rows; exactly ``need`` per query,
    left-aligned. A failure is a bug (ours or FAISS's), never bad user input."""
    found = rows >= 0
    bad = found & ((rows >= n) | ~eligible[np.clip(rows, 0, n - 1)])
    misplaced = (~found[:, :need]).any(axis=1) | found[:, need:].any(axis=1)
    srt = np.sort(rows, axis=1)
    twice = ((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)).any(axis=1)
    for broken, label in (
        (bad.any(axis=1), f"ineligible rows {rows[bad][:10].tolist()}"),
        (misplaced, f"not exactly {need} left-aligned results"),
        (twice, "the same row twice"),
    ):
        if broken.any():
            qs = np.flatnonzero(broken)
            raise AssertionError(
                f"{what}: {label} for queries {qs[:10].tolist()}; first: {rows[qs[0]].tolist()}"
            )


def _validate(
    index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int, eligible: Any
) -> tuple[np.ndarray, int]:
    """(``queries`` as C-contiguous float32, the index's row count n) or a ValueError."""
    n, d = index.ntotal, _dim(index)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if vectors.ndim != 2 or vectors.shape != (n, d) or vectors.dtype != np.float32:
        raise ValueError(f"vectors must be float32 [{n}, {d}], got {vectors.dtype} {vectors.shape}")
    if not isinstance(queries, np.ndarray) or queries.ndim != 2 or queries.shape[1] != d:
        raise ValueError(f"queries must be [q, {d}], got {getattr(queries, 'shape', queries)}")
    if eligible is not None:
        shape = getattr(eligible, "shape", type(eligible).__name__)
        if not (isinstance(eligible, np.ndarray) and eligible.dtype == np.bool_ and shape == (n,)):
            raise ValueError(f"eligible must be a bool mask of shape ({n},) or None, got {shape}")
    if queries.dtype == np.float32 and queries.flags.c_contiguous:
        return queries, n
    return np.ascontiguousarray(queries, dtype=np.float32), n


_DIMS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def _dim(index: faiss.Index) -> int:
    """The dimension of an inner-product ``index`` (cached: neither changes for an index)."""
    d = _DIMS.get(index)
    if d is None:
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError("index must use inner product (cosine on unit vectors)")
        d = _DIMS[index] = int(index.d)
    return d


def filtered_search(
    index: faiss.Index,
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    eligible: np.ndarray | None,
    params: PlannerParams | None = None,
) -> tuple[np.ndarray, np.ndarray, Plan]:
    """Top-``k`` rows among the ``eligible`` ones (bool [n], None = no filter) per query.

    ``index``: Flat, IVF-Flat, IVF-PQ (+ RFlat) or HNSW, inner product; ``vectors``: its exact
    float32 [n, d] rows (row i = FAISS id i; may be memory-mapped); ``queries``: [q, d] unit.
    Returns scores float32 [q, k] descending (-inf pads), rows int64 [q, k] (-1 pads) and the
    Plan; each query has exactly min(k, eligible count) rows, all eligible.
    """
    q, _ = _validate(index, vectors, queries, k, eligible)
    return checked_search(index, vectors, q, k, eligible, params)


def checked_search(
    index: faiss.Index,
    vectors: np.ndarray,
    q: np.ndarray,
    k: int,
    eligible: np.ndarray | None,
    params: PlannerParams | None = None,
) -> tuple[np.ndarray, np.ndarray, Plan]:
    """``filtered_search`` on arguments its caller has checked as ``_validate`` does (the
    live search path: a loaded slot, a mask it built, queries ``check_queries`` passed):
    ~1 us a call saved, a twentieth of a single-query IVF search."""
    on_device = device.attached(index)
    if on_device is not None:  # an exact slot: every query scanned by torch, mask first
        return _device_search(on_device, q, k, eligible)
    p = params or DEFAULT_PARAMS
    n = len(vectors)  # = index.ntotal, checked; a SWIG attribute read costs ~0.5 us
    kind, ivf, concrete = _parts(index)
    if eligible is None and len(q) and n:
        fast = _unfiltered(index, n, kind, ivf, concrete, vectors, q, k, p)
        if fast is not None:
            return fast
    return _planned(index, kind, vectors, q, k, eligible, p)


def _device_search(
    on: device.DeviceExact, q: np.ndarray, k: int, eligible: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, Plan]:
    """An exact slot's page: the eligible rows' exact top-k, the filter applied before it."""
    n = on.n
    m = n if eligible is None else mask_info(eligible).count
    scores, rows = on.search(q, k, eligible)
    if eligible is None:
        if not _full_pages(rows, n, min(k, n)):
            raise AssertionError("exact_device: a page is not min(k, n) distinct rows")
    else:
        _check_results(rows, n, eligible, min(k, m), "exact_device")
    return scores, rows, Plan("exact_device", n, m, m / n if n else 0.0, k)


SMALL_BATCH = 8  # up to this many queries, the unfiltered page check runs in Python
DEFAULT_PARAMS = PlannerParams()  # frozen: one instance serves every call without params
_PARTS: weakref.WeakKeyDictionary[Any, tuple[str, Any, Any]] = weakref.WeakKeyDictionary()


def _parts(index: faiss.Index) -> tuple[str, Any, Any]:
    """(kind, IVF part or None, most-derived index) of ``index``, cached: an index's kind never
    changes, and its knobs are read from these parts on every call (``set_search_params``
    may change them). Finding them costs ~10 us a call, as much as a single-query search."""
    parts = _PARTS.get(index)
    if parts is None:
        kind = index_kind(index)
        ivf = faiss.extract_index_ivf(index) if kind in ("ivf", "ivfpq") else None
        parts = _PARTS[index] = (kind, ivf, faiss.downcast_index(index))
    return parts


_FILLED: weakref.WeakKeyDictionary[Any, tuple[int, bool]] = weakref.WeakKeyDictionary()


def _all_cells_filled(index: faiss.Index, n: int) -> bool:
    """Whether every IVF cell of ``index`` (holding ``n`` rows) holds a row: the planner probes
    only those that do, FAISS the nprobe nearest, full or empty. Cached per index and size,
    as ``probing.ivf_layout`` is."""
    hit = _FILLED.get(index)
    if hit is None or hit[0] != n:
        hit = _FILLED[index] = (n, bool(ivf_layout(index)[2].all()))
    return hit[1]


@functools.lru_cache(maxsize=1024)
def _ann_plan(n: int, k: int, nprobe: int | None, ef: int | None, kf: float | None) -> Plan:
    """The plan of an unfiltered page filled in one round (immutable: shared across calls)."""
    return Plan("ann", n, n, 1.0, k, nprobe, nprobe, ef, kf, 1, nprobe_final=nprobe)


def _unfiltered(
    index: faiss.Index,
    n: int,
    kind: str,
    ivf: Any,
    concrete: Any,
    vectors: np.ndarray,
    q: np.ndarray,
    k: int,
    p: PlannerParams,
) -> tuple[np.ndarray, np.ndarray, Plan] | None:
    """The ``ann`` plan without a filter, as one call of the index's own search.

    Round 1 of ``_planned`` asks FAISS for exactly this page (the index's nprobe and refine,
    or efSearch max(k, ef_search)), but pays per call for an all-true [n] mask, its count and
    the rounds' bookkeeping: ~5x the search itself for one query on 1M rows
    (``benchmarks/query_overhead.py``). Queries whose page comes back short take the planner
    (re-probing, then exact), as before. None where round 1 would differ from the index's
    own search (overridden IVF knobs, an empty IVF cell the planner would skip): the planner.
    A full page of the index's own search holds distinct rows in [0, n) (FAISS's contract,
    which the planner's tests check on every index kind), so only its length is checked here.
    """
    nprobe, k_factor, ef, sp = None, None, None, None
    if ivf is not None:
        if p.nprobe is not None or p.k_factor is not None or not _all_cells_filled(index, n):
            return None
        nprobe = int(ivf.nprobe)
        k_factor = float(concrete.k_factor) if kind == "ivfpq" else None
    elif kind == "hnsw":
        own = int(concrete.hnsw.efSearch)
        ef = min(max(k, p.ef_search or own), p.max_ef_search)
        if ef != own:
            sp = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            sp.efSearch = ef
    scores, rows = own_search(index, q, k, sp)
    need = min(k, n)
    if need < k:  # FAISS pads with -FLT_MAX; the planner's pages with -inf
        scores[:, need:] = -np.inf
    plan = _ann_plan(n, k, nprobe, ef, k_factor)
    last = rows[:, need - 1]  # FAISS fills a page left to right: short iff its need-th is -1
    if last[0] < 0 if len(last) == 1 else (last < 0).any():
        short = np.flatnonzero(last < 0)  # re-probed, then exact, by the planner
        scores[short], rows[short], plan = _planned(index, kind, vectors, q[short], k, None, p)
        _check_results(rows, n, np.ones(n, dtype=bool), need, "ann")
    return scores, rows, plan


def own_search(
    index: faiss.Index, q: np.ndarray, k: int, params: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """``index.search(q, k, params=params)`` for C-contiguous float32 ``q`` [m, d], without
    the Python wrapper's checks and conversions (~2 us a call, a tenth of a single-query
    IVF search): scores float32 [m, k], rows int64 [m, k]."""
    scores, rows = np.empty((len(q), k), np.float32), np.empty((len(q), k), np.int64)
    ptr = faiss.swig_ptr
    index.search_c(len(q), ptr(q), k, ptr(scores), ptr(rows), params)  # type: ignore[attr-defined]
    return scores, rows


def _full_pages(rows: np.ndarray, n: int, need: int) -> bool:
    """Whether every page of ``rows`` [q, k] holds ``need`` distinct rows in [0, n), then only
    -1: ``_check_results`` for an all-eligible page, cheaply (Python sets for a handful of
    queries, serving's one per call; array operations for a batch)."""
    if need < rows.shape[1] and (rows[:, need:] != -1).any():
        return False
    if len(rows) <= SMALL_BATCH:
        pages = rows[:, :need].tolist()
        return all(len(set(r)) == need and min(r) >= 0 and max(r) < n for r in pages)
    srt = np.sort(rows[:, :need], axis=1)
    in_range = bool(srt[:, 0].min() >= 0 and srt[:, -1].max() < n)
    return in_range and not (srt[:, 1:] == srt[:, :-1]).any()


def _planned(
    index: faiss.Index,
    kind: str,
    vectors: np.ndarray,
    q: np.ndarray,
    k: int,
    eligible: np.ndarray | None,
    p: PlannerParams,
) -> tuple[np.ndarray, np.ndarray, Plan]:
    """``filtered_search`` on checked inputs: every strategy, rounds and fallbacks."""
    n = index.ntotal
    mask = np.ones(n, dtype=bool) if eligible is None else eligible
    info = mask_info(mask)  # count, selector, ...: cached for a frozen mask (masks.py)
    m = info.count
    need, s = min(k, m), (m / n if n else 0.0)
    filtered = m < n  # an all-eligible mask searches unfiltered: same answer, no selector cost
    # Exact for a small, sparse mask; a dense one (most rows eligible) is what the ANN index is
    # tuned for, and an exact scan of it costs what all n rows cost.
    small = m <= max(p.exact_max_eligible, p.exact_max_fraction * n) and (
        s <= p.exact_max_selectivity
    )
    if m == 0 or len(q) == 0 or (filtered and (small or kind == "flat")):
        # In place for a dense mask (no gather of most of a memory-mapped file per query).
        scores, rows = exact_masked(vectors, mask, q, k) if m and len(q) else empty_page(q, k)
        _check_results(rows, n, mask, need, "exact_subset")
        return scores, rows, Plan("exact_subset", n, m, s, k)

    # The selector's bitmap lives in ``info``, held until the last search that reads it.
    sel = info.selector() if filtered else None
    ivf = kind in ("ivf", "ivfpq")
    search, widen, effort, cap, skip, finish = (
        ivf_rounds(index, vectors, q, mask, need, sel, p) if ivf
        else graph_rounds(index, q, mask, k, need, sel, p)
    )  # fmt: skip
    first = effort.copy()
    scores, rows = empty_page(q, k)
    widened = np.zeros(len(q), dtype=bool)
    exact, switched = skip.copy(), skip.copy()
    todo, rounds, retried = np.flatnonzero(~skip), 0, 0
    while len(todo):
        rounds += 1
        scores[todo, :need], rows[todo, :need] = search(todo, effort[todo])
        short = (rows[todo, :need] >= 0).sum(axis=1) < need
        retried = int(short.sum()) if rounds == 1 else retried
        # Unfiltered pages keep the index's tuned probes: the margin is for filtered ones.
        ask, costly = widen(todo, scores[todo, :need], rows[todo, :need]) if filtered else (
            effort[todo], np.zeros(len(todo), dtype=bool))  # fmt: skip
        want = np.where(short, np.minimum(cap, 2 * effort[todo]), np.maximum(effort[todo], ask))
        last = rounds >= p.max_rounds
        # Short after the last round, or at the cap (searched everything): exact. A full page
        # the margin would still widen after the last round is left to the check.
        costly &= want > effort[todo]
        out = (short & (last | (effort[todo] >= cap))) | costly
        exact[todo[out]], switched[todo[costly]] = True, True
        more = ~out & (want > effort[todo]) & (not last)
        widened[todo[more & ~short]] = True
        todo = todo[more]
        effort[todo] = want[more]
    # IVF pages of correlated queries: every unprobed row that could beat them, scored.
    ask, bounded = np.flatnonzero(~exact), np.zeros(len(q), dtype=bool)
    if filtered and len(ask):
        (scores[ask, :need], rows[ask, :need]), bounded[ask], costly = finish(
            ask, scores[ask, :need], rows[ask, :need])  # fmt: skip
        exact[ask[costly]], switched[ask[costly]] = True, True
    suspect = np.zeros(len(q), dtype=bool)
    check = min(p.check_rows, m) if filtered else 0
    # An IVF query that probed every cell holding eligible rows has no region left to miss; an
    # IVF-Flat page the bound completed is exact (IVF-PQ's stays checked: its scans are coded).
    sure = (effort >= cap) | (bounded & (kind == "ivf")) if ivf else np.zeros(len(q), dtype=bool)
    unsure = np.flatnonzero(~exact & ~sure)
    if check and len(unsure):
        page = scores[unsure, :need], rows[unsure, :need]
        suspect[unsure] = suspects(vectors, mask, q[unsure], page, need, check)
    short_rows = np.flatnonzero(exact | suspect)
    if len(short_rows):
        scores[short_rows], rows[short_rows] = exact_masked(vectors, mask, q[short_rows], k)
    strategy = "ann_filtered" if filtered else "ann"
    _check_results(rows, n, mask, need, strategy)
    lo, hi = (int(first.min()), int(first.max())) if ivf else (None, None)
    ef_search = int(first[~skip].max()) if kind == "hnsw" and not skip.all() else None
    k_factor = float(p.k_factor or search_params(index)["refine"]) if kind == "ivfpq" else None
    counts = (rounds, retried, len(short_rows), len(short_rows) > 0, int(widened.sum()))
    final = int(effort.max()) if ivf else None
    checks = (int(switched.sum()), check, int(suspect.sum()), int(bounded.sum()))
    return (
        scores,
        rows,
        Plan(strategy, n, m, s, k, lo, hi, ef_search, k_factor, *counts, final, *checks),
    )
