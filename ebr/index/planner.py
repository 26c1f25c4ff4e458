"""Filtered top-k search: exact over the eligible subset, or ANN with a selector, by selectivity.

Checked on every call: no returned row is ineligible; each query gets min(k, eligible) rows.

- ``ann``: no filter (or all rows eligible): the index's own probes, re-probing short queries.
- ``exact_subset``: eligible <= max(20k, 2% of n), or a flat index: scan only the eligible
  rows' exact vectors (``faiss.knn``), exact results at a cost that grows with the eligible
  count. On 1M x 64 it out-ran IVF-PQ + bitmap up to 2-5% selectivity (2 threads, 1,000
  queries; ``benchmarks/filtered_search.py``, crossover): hence 2%.
- ``ann_filtered``: FAISS with an ``IDSelectorBitmap`` (O(1) per check). IVF: each query
  probes, nearest first, only cells holding eligible rows, until they hold as many as
  ``nprobe / selectivity**a`` cells would for a filter independent of the vectors; a correlated
  filter (a far region) skips the near, empty cells instead of losing recall. HNSW raises
  efSearch by ``selectivity**-a``. Short queries get doubled probes, then exact answers.

    scores, rows, plan = filtered_search(slot.index, slot.vectors, q, 10, table.mask(flt))
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from ebr.index.params import index_kind, search_params

EXACT_CHUNK_ROWS = 262_144  # exact scans gather at most this many rows at once (64 MiB at d=64)
Found = tuple[np.ndarray, np.ndarray]  # scores float32 [nq, k], rows int64 [nq, k]


@dataclass(frozen=True)
class PlannerParams:
    """Knobs of ``filtered_search``; the defaults come from the 1M-job benchmark."""

    exact_max_eligible: int = 20_000  # at or below: exact subset scan (cheaper than ANN there)
    exact_max_fraction: float = 0.02  # ... or at or below this share of n
    nprobe: int | None = None  # base IVF probes; None -> the index's own nprobe
    ef_search: int | None = None  # base HNSW efSearch; None -> the index's own
    k_factor: float | None = None  # refine re-ranks k_factor * k; None -> the index's own
    selectivity_exponent: float = 0.5  # probe depth grows as selectivity ** -a (a=1: linear)
    max_rounds: int = 3  # ANN rounds (probes double each) before the exact fallback
    max_ef_search: int = 4096  # HNSW efSearch ceiling (graph walks get slow beyond)

    def __post_init__(self) -> None:
        knobs = [v for v in (self.nprobe, self.ef_search, self.k_factor) if v is not None]
        rules = {
            "exact_max_eligible >= 0": self.exact_max_eligible >= 0,
            "exact_max_fraction in [0, 1]": 0 <= self.exact_max_fraction <= 1,
            "nprobe, ef_search, k_factor >= 1 or None": all(v >= 1 for v in knobs),
            "selectivity_exponent in [0, 2]": 0 <= self.selectivity_exponent <= 2,
            "max_rounds, max_ef_search >= 1": min(self.max_rounds, self.max_ef_search) >= 1,
        }
        broken = [rule for rule, ok in rules.items() if not ok]
        if broken:
            raise ValueError(f"PlannerParams needs {'; '.join(broken)}; got {self}")


@dataclass(frozen=True)
class Plan:
    """What ``filtered_search`` did (JSON-able with ``dataclasses.asdict``)."""

    strategy: str  # "ann" | "exact_subset" | "ann_filtered"
    n: int  # rows in the index
    eligible: int  # rows passing the filter
    selectivity: float  # eligible / n
    k: int
    nprobe: int | None = None  # IVF cells probed in round 1, fewest over queries (None: no IVF)
    nprobe_max: int | None = None  # ... and most (a query far from the eligible rows needs more)
    ef_search: int | None = None  # HNSW efSearch in the first round
    k_factor: float | None = None  # refine factor (IVFPQ + RFlat)
    rounds: int = 0  # ANN rounds run (0 for exact_subset)
    retried_queries: int = 0  # queries that needed more than one ANN round
    fallback_queries: int = 0  # queries answered by the exact fallback after the ANN rounds
    fallback: bool = False  # fallback_queries > 0


def _empty(q: np.ndarray, k: int) -> Found:
    return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)


def _top(scores: np.ndarray, rows: np.ndarray, k: int) -> Found:
    """The k best of each row of ``scores`` / ``rows`` [nq, c] (-inf scores are padding)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    s, r = np.take_along_axis(scores, top, 1), np.take_along_axis(rows, top, 1)
    return s.astype(np.float32), np.where(np.isneginf(s), -1, r)


def _exact(vectors: np.ndarray, rows: np.ndarray, q: np.ndarray, k: int) -> Found:
    """Exact top-k of ``q`` [nq, d] over ``vectors[rows]``, padded; chunked so a large subset
    (the fallback may see half the catalogue) is never gathered whole."""
    best = _empty(q, k)
    for start in range(0, len(rows), EXACT_CHUNK_ROWS):
        chunk = rows[start : start + EXACT_CHUNK_ROWS]
        # faiss.knn: no copy into an index (exact_topk's), and it out-ran BLAS for 1-1000 q.
        sub = np.ascontiguousarray(vectors[chunk], dtype=np.float32)
        s, i = faiss.knn(q, sub, min(k, len(chunk)), metric=faiss.METRIC_INNER_PRODUCT)
        s, i = np.where(i >= 0, s, -np.inf), np.where(i >= 0, chunk[np.maximum(i, 0)], -1)
        best = _top(np.concatenate([best[0], s], 1), np.concatenate([best[1], i], 1), k)
    return best


_LAYOUTS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _ivf_layout(index: faiss.Index) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(IVF cell of each row int32 [n], centroids float32 [nlist, d], cell sizes int64 [nlist]),
    cached per index."""
    hit = _LAYOUTS.get(index)
    if hit is not None and len(hit[0]) == index.ntotal:
        return hit
    ivf: Any = faiss.extract_index_ivf(index)
    if ivf.quantizer.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ValueError("IVF quantizer must rank cells by inner product")
    cell = np.full(index.ntotal, -1, dtype=np.int32)
    for c in range(ivf.nlist):  # ~10 ms at 1M rows: read the ids FAISS keeps per cell
        size = ivf.invlists.list_size(c)
        if size:
            cell[faiss.rev_swig_ptr(ivf.invlists.get_ids(c), size)] = c
    sizes = np.bincount(cell, minlength=ivf.nlist)
    _LAYOUTS[index] = (cell, ivf.quantizer.reconstruct_n(0, ivf.nlist), sizes)
    return _LAYOUTS[index]


def _nearest(scores: np.ndarray, width: int) -> np.ndarray:
    """Column indices of the ``width`` highest ``scores`` [nq, c] per row, best first."""
    if width >= scores.shape[1]:
        return np.argsort(-scores, axis=1)
    top = np.argpartition(-scores, width - 1, axis=1)[:, :width]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), 1), 1)


def _ivf_rounds(
    index: faiss.Index, q: np.ndarray, mask: np.ndarray, need: int, sel: Any, p: PlannerParams
) -> tuple[Callable[[np.ndarray, np.ndarray], Found], np.ndarray, int]:  # fmt: skip
    """(search(queries, probes), first-round probes int [nq], most probes) for an IVF index."""
    own = search_params(index)
    base, k_factor = p.nprobe or own["nprobe"], p.k_factor or own.get("refine")
    cell, centroids, sizes = _ivf_layout(index)
    n, m, nlist = len(cell), int(mask.sum()), len(centroids)
    counts = sizes if m == n else np.bincount(cell[mask], minlength=nlist)  # eligible per cell
    live = np.flatnonzero(counts)  # cells holding eligible rows: the only ones worth a probe
    scores = q @ centroids[live].T  # [nq, live]: the order FAISS probes cells in
    lo = min(base, len(live))
    probes = np.full(len(q), lo)
    if m < n:
        s, a = m / n, p.selectivity_exponent
        target = min(m, base * (n / nlist) * s ** (1 - a))
        # Sorting every cell costs about as much as the search: sort twice the depth an
        # independent filter needs, then fully only the queries that it does not cover.
        guess = min(len(live), 2 * math.ceil(base * s**-a))
        probes = (np.cumsum(counts[live[_nearest(scores, guess)]], 1) < target).sum(1) + 1
        far = np.flatnonzero(probes > guess)
        cover = np.cumsum(counts[live[_nearest(scores[far], len(live))]], 1) < target
        probes[far] = cover.sum(1) + 1
        probes = np.clip(probes, lo, len(live))
    kk = math.ceil(need * k_factor) if k_factor else need  # refine: candidates to re-rank
    ivf: Any = faiss.extract_index_ivf(index)
    refine: Any = faiss.downcast_index(index.refine_index) if k_factor else None  # type: ignore[attr-defined]

    def search(todo: np.ndarray, width: np.ndarray) -> Found:
        order = _nearest(scores[todo], int(width.max()))
        assign = np.where(np.arange(order.shape[1]) < width[:, None], live[order], -1)
        dis = np.ascontiguousarray(np.take_along_axis(scores[todo], order, 1))
        xq, sp = np.ascontiguousarray(q[todo]), faiss.SearchParametersIVF()
        sp.nprobe, sp.sel = order.shape[1], sel
        d_, i_ = np.empty((len(todo), kk), np.float32), np.empty((len(todo), kk), np.int64)
        ptr = faiss.swig_ptr  # the Python wrapper of search_preassigned refuses params
        ivf.search_preassigned_c(len(todo), ptr(xq), kk, ptr(assign), ptr(dis), ptr(d_),
                                 ptr(i_), False, sp)  # fmt: skip
        if k_factor:  # re-rank exactly, as IndexRefineFlat.search does (its flat copy, in C++)
            ids = np.maximum(i_, 0)  # -1 padding would index out of bounds
            refine.compute_distance_subset(len(todo), ptr(xq), kk, ptr(d_), ptr(ids))
        return _top(np.where(i_ >= 0, d_, -np.inf), i_, need)

    return search, probes, len(live)


def _graph_rounds(
    index: faiss.Index, q: np.ndarray, k: int, need: int, s: float, sel: Any, p: PlannerParams
) -> tuple[Callable[[np.ndarray, np.ndarray], Found], np.ndarray, int]:
    """The same for HNSW (effort = efSearch) and flat (one exact round) indexes."""
    own = search_params(index)
    ef = math.ceil((p.ef_search or own.get("ef_search", 1)) * s**-p.selectivity_exponent)
    hnsw = "ef_search" in own
    sp: Any = faiss.SearchParametersHNSW() if hnsw else faiss.SearchParameters()  # type: ignore[attr-defined]
    sp.sel = sel

    def search(todo: np.ndarray, effort: np.ndarray) -> Found:
        if hnsw:
            sp.efSearch = int(effort.max())  # one value per call: efforts are equal per round
        d_, i_ = index.search(np.ascontiguousarray(q[todo]), need, params=sp)
        return np.where(i_ >= 0, d_, -np.inf), i_

    cap = p.max_ef_search if hnsw else 0
    return search, np.full(len(q), min(cap, max(k, ef)) if hnsw else 0), cap


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
) -> np.ndarray:
    n, d = index.ntotal, index.d
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ValueError("index must use inner product (cosine on unit vectors)")
    if vectors.ndim != 2 or vectors.shape != (n, d) or vectors.dtype != np.float32:
        raise ValueError(f"vectors must be float32 [{n}, {d}], got {vectors.dtype} {vectors.shape}")
    if not isinstance(queries, np.ndarray) or queries.ndim != 2 or queries.shape[1] != d:
        raise ValueError(f"queries must be [q, {d}], got {getattr(queries, 'shape', queries)}")
    shape = getattr(eligible, "shape", type(eligible).__name__)
    mask_ok = isinstance(eligible, np.ndarray) and eligible.dtype == np.bool_ and shape == (n,)
    if eligible is not None and not mask_ok:
        raise ValueError(f"eligible must be a bool mask of shape ({n},) or None, got {shape}")
    return np.ascontiguousarray(queries, dtype=np.float32)


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
    p = params or PlannerParams()
    q = _validate(index, vectors, queries, k, eligible)
    n, kind = index.ntotal, index_kind(index)
    mask = np.ones(n, dtype=bool) if eligible is None else eligible
    m = int(mask.sum())
    need, s = min(k, m), (m / n if n else 0.0)
    filtered = m < n  # an all-eligible mask searches unfiltered: same answer, no selector cost
    small = m <= max(p.exact_max_eligible, p.exact_max_fraction * n)
    if m == 0 or len(q) == 0 or (filtered and (small or kind == "flat")):
        scores, rows = _exact(vectors, np.flatnonzero(mask), q, k) if m and len(q) else _empty(q, k)
        _check_results(rows, n, mask, need, "exact_subset")
        return scores, rows, Plan("exact_subset", n, m, s, k)

    # The bitmap must outlive every search that reads it: FAISS keeps a raw pointer.
    bits = np.packbits(mask, bitorder="little") if filtered else None
    sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits)) if bits is not None else None
    ivf = kind in ("ivf", "ivfpq")
    search, effort, cap = (
        _ivf_rounds(index, q, mask, need, sel, p) if ivf
        else _graph_rounds(index, q, k, need, s, sel, p)
    )  # fmt: skip
    first = effort.copy()
    scores, rows = _empty(q, k)
    todo, stuck, rounds, retried = np.arange(len(q)), [], 0, 0
    while len(todo) and rounds < p.max_rounds:
        rounds += 1
        scores[todo, :need], rows[todo, :need] = search(todo, effort[todo])
        todo = todo[(rows[todo, :need] >= 0).sum(axis=1) < need]
        retried = len(todo) if rounds == 1 else retried
        stuck.append(todo[effort[todo] >= cap])  # searched everything: more rounds find nothing
        todo = todo[effort[todo] < cap]
        effort[todo] = np.minimum(cap, 2 * effort[todo])
    short = np.concatenate([todo, *stuck])
    if len(short):
        scores[short], rows[short] = _exact(vectors, np.flatnonzero(mask), q[short], k)
    strategy = "ann_filtered" if filtered else "ann"
    _check_results(rows, n, mask, need, strategy)
    lo, hi = (int(first.min()), int(first.max())) if ivf else (None, None)
    ef_search = int(first.max()) if kind == "hnsw" else None
    k_factor = float(p.k_factor or search_params(index)["refine"]) if kind == "ivfpq" else None
    counts = (rounds, retried, len(short), len(short) > 0)
    return scores, rows, Plan(strategy, n, m, s, k, lo, hi, ef_search, k_factor, *counts)
