"""The ANN rounds behind ``ebr.index.query.planner.filtered_search``, one builder per index family.

- ``ivf_rounds``: IVF / IVF-PQ probes, nearest cell first, only cells holding eligible rows;
  later rounds scan only cells not scanned yet and merge them into the page. A score margin
  (``spill``) widens a query's probes while an unprobed cell could still hold a better row;
  then every row of the unprobed cells that could still beat the page is scored
  (``ebr.index.query.bound``: no far outlier is left to the margin's statistics).
- ``ebr.index.query.graph.graph_rounds``: the same for HNSW (and flat) indexes.
- ``suspects``: the check on every filtered ANN page (a sample of eligible rows, scored exactly).
- ``exact_subset``: the exact scan over the eligible rows (the planner's ``exact_subset`` plan and
  every fallback).

Each builder returns ``Rounds``: (search(queries, effort) -> page, widen(queries, scores, rows)
-> (effort the margin asks for, switch to exact), first-round effort int [nq], effort cap,
queries to answer exactly from the start bool [nq], finish(queries, scores, rows) -> (page,
pages made exact over the unprobed cells, switch to exact)).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from ebr.index.query.bound import cell_cones, reachable
from ebr.index.query.masks import mask_info
from ebr.index.query.params import PlannerParams, search_params

EXACT_CHUNK_ROWS = 262_144  # exact scans gather at most this many rows at once (64 MiB at d=64)
SPILL_QUERIES = 32  # rows used as queries to measure how far winners stick out of cells
CORRELATED_SHARE = 0.75  # IVF: near cells holding less than this x the eligible share: margin
LOW_SIGMAS = 3.0  # ... or the nearest cell this many binomial sd below its expected share
SCORE_TOLERANCE = 1e-5  # float32 scores of one row from FAISS and numpy differ by ~1e-7
Found = tuple[np.ndarray, np.ndarray]  # scores float32 [nq, k], rows int64 [nq, k]
Rounds = tuple[
    Callable[[np.ndarray, np.ndarray], Found],
    Callable[..., Any],
    np.ndarray,
    int,
    np.ndarray,
    Callable[..., tuple[Found, np.ndarray, np.ndarray]],
]


def empty_page(q: np.ndarray, k: int) -> Found:
    return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)


def _top(scores: np.ndarray, rows: np.ndarray, k: int) -> Found:
    """The k best of each row of ``scores`` / ``rows`` [nq, c] (-inf scores are padding)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    s, r = np.take_along_axis(scores, top, 1), np.take_along_axis(rows, top, 1)
    return s.astype(np.float32), np.where(np.isneginf(s), -1, r)


def _merge(scores: np.ndarray, rows: np.ndarray, k: int) -> Found:
    """``_top`` of [nq, c] candidates where a row may appear twice (a cell probed twice: the
    nearest-first order of equal centroid scores can differ between rounds)."""
    order = np.argsort(rows, axis=1, kind="stable")
    srt = np.take_along_axis(rows, order, 1)
    twice = np.zeros(srt.shape, dtype=bool)
    twice[:, 1:] = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
    kept = np.empty_like(scores)
    np.put_along_axis(
        kept, order, np.where(twice, -np.inf, np.take_along_axis(scores, order, 1)), 1
    )
    return _top(kept, rows, k)


def exact_subset(vectors: np.ndarray, rows: np.ndarray, q: np.ndarray, k: int) -> Found:
    """Exact top-k of ``q`` [nq, d] over ``vectors[rows]``, padded; chunked so a large subset
    (the fallback may see half the catalogue) is never gathered whole."""
    best = empty_page(q, k)
    for start in range(0, len(rows), EXACT_CHUNK_ROWS):
        chunk = rows[start : start + EXACT_CHUNK_ROWS]
        # faiss.knn: no copy into an index (exact_topk's), and it out-ran BLAS for 1-1000 q.
        sub = np.ascontiguousarray(vectors[chunk], dtype=np.float32)
        s, i = faiss.knn(q, sub, min(k, len(chunk)), metric=faiss.METRIC_INNER_PRODUCT)
        s, i = np.where(i >= 0, s, -np.inf), np.where(i >= 0, chunk[np.maximum(i, 0)], -1)
        best = _top(np.concatenate([best[0], s], 1), np.concatenate([best[1], i], 1), k)
    return best


_LAYOUTS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_SPILLS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
Layout = tuple[np.ndarray, np.ndarray, np.ndarray]


def ivf_layout(index: faiss.Index) -> Layout:
    """(IVF cell of each row int32 [n], centroids float32 [nlist, d], cell sizes int64
    [nlist]), cached per index."""
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


def spill(index: faiss.Index, vectors: np.ndarray) -> np.ndarray:
    """By how much the best rows score above their own cell's centroid when the filter keeps
    only the cells far from the query: sorted float32 [<= SPILL_QUERIES * 10], cached per index.

    Such a query's best rows are those that stick out of their cells towards it, in many
    cells, so probing cells by centroid score alone misses them; this measures how far they
    stick out, on the index's own rows: queries are random rows, the filter keeps the cells
    scoring below the median centroid score (a region away from the query). ~0.5 s at 1M x 64,
    paid by the first filtered search of an index.
    """
    hit = _SPILLS.get(index)
    if hit is not None and hit[0] == index.ntotal:
        return hit[1]
    cell, centroids, _ = ivf_layout(index)
    rng = np.random.default_rng(0)
    g = np.asarray(vectors[np.sort(rng.choice(len(cell), SPILL_QUERIES))], dtype=np.float32)
    by_cell = g @ centroids.T  # [g, nlist]
    far = by_cell < np.median(by_cell, axis=1, keepdims=True)
    best = empty_page(g, 10)
    for start in range(0, len(cell), EXACT_CHUNK_ROWS):
        chunk = np.arange(start, min(start + EXACT_CHUNK_ROWS, len(cell)))
        s = g @ np.asarray(vectors[start : start + len(chunk)], dtype=np.float32).T
        s = np.where(far[:, cell[chunk]], s, -np.inf)
        top = np.argsort(-s, axis=1)[:, :10] if s.shape[1] <= 10 else (
            np.argpartition(-s, 9, axis=1)[:, :10])  # fmt: skip
        both = np.hstack([best[0], np.take_along_axis(s, top, 1)]), np.hstack([best[1], chunk[top]])
        best = _top(*both, 10)
    found = best[1] >= 0
    lead = best[0] - np.take_along_axis(by_cell, cell[np.maximum(best[1], 0)], 1)
    _SPILLS[index] = (index.ntotal, np.sort(lead[found]).astype(np.float32))
    return _SPILLS[index][1]


def _nearest(scores: np.ndarray, width: int) -> np.ndarray:
    """Column indices of the ``width`` highest ``scores`` [nq, c] per row, best first."""
    if width >= scores.shape[1]:
        return np.argsort(-scores, axis=1, kind="stable")
    top = np.argpartition(-scores, width - 1, axis=1)[:, :width]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), 1), 1)


def ivf_rounds(
    index: faiss.Index, vectors: np.ndarray, q: np.ndarray, mask: np.ndarray, need: int,
    sel: Any, p: PlannerParams,
) -> Rounds:  # fmt: skip
    """``Rounds`` for an IVF index. Each round scans only the cells a query has not scanned yet
    and merges them into its page; ``widen`` gives the probes the score margin asks for, and
    ``finish`` scans, after the rounds, the cells the cone bound cannot rule out."""
    own = search_params(index)
    base, k_factor = p.nprobe or own["nprobe"], p.k_factor or own.get("refine")
    cell, centroids, sizes = ivf_layout(index)
    info = mask_info(mask)  # cached for a frozen mask (a live view's not-deleted rows)
    n, m, nlist = len(cell), info.count, len(centroids)
    counts = sizes if m == n else info.cell_counts(cell, nlist)  # eligible per cell
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
    done = np.zeros(len(q), dtype=np.int64)  # cells each query has scanned, nearest first
    page = empty_page(q, need)
    leads = spill(index, vectors) if p.margin_quantile is not None and m < n else np.empty(0)
    use_margin = len(leads) > 0
    margin = float(np.quantile(leads, p.margin_quantile or 0.0)) if use_margin else 0.0
    margin_of = np.full(len(q), -4.0)  # -4: no cell scores 4 above a page (cosines): no margin
    if use_margin:
        # The margin is for queries the filter correlates with: the cells an unfiltered search
        # would probe hold a smaller share of eligible rows than the catalogue, or the nearest
        # alone does, improbably for a filter independent of the vectors (LOW_SIGMAS below the
        # binomial mean; its other near cells may be another, eligible, cluster's). Elsewhere
        # the eligible rows spread like all rows and the first-round probes keep the recall.
        near = _nearest(q @ centroids.T, min(base, nlist))
        local = counts[near].sum(axis=1) / np.maximum(sizes[near].sum(axis=1), 1)
        s, held, first = m / n, counts[near[:, 0]], sizes[near[:, 0]]
        low = (held < CORRELATED_SHARE * s * first) & (
            held < s * first - LOW_SIGMAS * np.sqrt(first * s * (1 - s)))  # fmt: skip
        margin_of[(local < CORRELATED_SHARE * s) | low] = margin

    def scan(todo: np.ndarray, assign: np.ndarray, dis: np.ndarray) -> Found:
        """Scan cells ``assign`` [t, w] (-1: none; centroid scores ``dis``) for queries
        ``todo`` and merge what they hold into their pages."""
        xq, sp = np.ascontiguousarray(q[todo]), faiss.SearchParametersIVF()
        sp.nprobe, sp.sel = assign.shape[1], sel
        d_, i_ = np.empty((len(todo), kk), np.float32), np.empty((len(todo), kk), np.int64)
        # Named: FAISS reads raw pointers, which must outlive the call.
        cells, dis = np.ascontiguousarray(assign), np.ascontiguousarray(dis)
        ptr = faiss.swig_ptr  # the Python wrapper of search_preassigned refuses params
        ivf.search_preassigned_c(len(todo), ptr(xq), kk, ptr(cells), ptr(dis), ptr(d_),
                                 ptr(i_), False, sp)  # fmt: skip
        if k_factor:  # re-rank exactly, as IndexRefineFlat.search does (its flat copy, in C++)
            ids = np.maximum(i_, 0)  # -1 padding would index out of bounds
            refine.compute_distance_subset(len(todo), ptr(xq), kk, ptr(d_), ptr(ids))
        d_ = np.where(i_ >= 0, d_, -np.inf)
        both = _merge(np.hstack([page[0][todo], d_]), np.hstack([page[1][todo], i_]), need)
        page[0][todo], page[1][todo] = both
        return both

    def search(todo: np.ndarray, width: np.ndarray) -> Found:
        order = _nearest(scores[todo], int(width.max()))
        cols = np.arange(order.shape[1])
        new = (cols >= done[todo, None]) & (cols < width[:, None])
        assign = np.where(new, live[order], -1)  # FAISS skips -1: only the cells not yet seen
        both = scan(todo, assign, np.take_along_axis(scores[todo], order, 1))
        done[todo] = np.maximum(done[todo], width)
        return both

    def widen(todo: np.ndarray, s_: np.ndarray, r_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probes the margin asks for int [t], whether they would scan more than exact_share
        of the eligible rows bool [t]) for queries ``todo`` with pages ``s_``, ``r_`` [t, need]."""
        full = (r_ >= 0).all(axis=1)  # a short page doubles its probes instead
        if not use_margin:
            return np.zeros(len(todo), np.int64), np.zeros(len(todo), dtype=bool)
        near = scores[todo] >= s_[:, need - 1 :] - margin_of[todo, None]  # [t, live]
        costly = near.astype(np.float32) @ counts[live] > p.exact_share * m
        return np.where(full, near.sum(axis=1), 0), full & costly

    def finish(todo: np.ndarray, s_: np.ndarray, r_: np.ndarray) -> tuple[Found, Any, Any]:
        """Full pages ``s_``, ``r_`` [t, need] of correlated queries ``todo`` completed by the
        cone bound (``ebr.index.query.bound``): every unprobed cell that could hold a better
        row is scanned. Returns (the pages, completed bool [t], exact instead bool [t]: the
        cells would hold more than exact_share of the eligible rows; with cone_bound "cheap"
        those pages stand as the margin left them, for the sample check)."""
        none = np.zeros(len(todo), dtype=bool)
        flagged = margin_of[todo] > -4
        if p.cone_bound == "off" or not flagged.any():  # the ordinary path: no cost
            return (s_, r_), none, none
        at = np.flatnonzero(flagged & (r_ >= 0).all(axis=1) & (done[todo] < len(live)))
        if not len(at):
            return (s_, r_), none, none
        qs = todo[at]
        order = _nearest(scores[qs], int(done[qs].max()))
        last_probed = order[np.arange(len(at)), done[qs] - 1]
        last = np.take_along_axis(scores[qs], last_probed[:, None], 1)
        cones = cell_cones(index, vectors, (cell, centroids, sizes))
        # Cells tied with the last one probed count as unprobed: scanned again, merged once.
        unprobed = scores[qs] <= last
        extra = unprobed & reachable(cones, q[qs], s_[at, need - 1], live, SCORE_TOLERANCE)
        costly = (~unprobed | extra).astype(np.float32) @ counts[live] > p.exact_share * m
        go = np.flatnonzero(~costly & extra.any(axis=1))
        if len(go):
            key = np.where(extra[go], scores[qs[go]], -np.inf)
            order = _nearest(key, int(extra[go].sum(axis=1).max()))  # extra cells, best first
            assign = np.where(np.take_along_axis(extra[go], order, 1), live[order], -1)
            scan(qs[go], assign, np.take_along_axis(scores[qs[go]], order, 1))
        done_, switch = none.copy(), none.copy()
        done_[at], switch[at] = ~costly, costly & (p.cone_bound == "on")
        return (page[0][todo], page[1][todo]), done_, switch

    return search, widen, probes, len(live), np.zeros(len(q), dtype=bool), finish


def suspects(
    vectors: np.ndarray, mask: np.ndarray, q: np.ndarray, page: Found, need: int, size: int
) -> np.ndarray:
    """Queries (bool [nq]) whose page ``page`` ([nq, need] scores, rows) misses a row better
    than its last: ``size`` eligible rows (fixed seed) scored exactly against every query.

    A page beaten by one row of a sample of s out of m eligible rows misses about m / s rows:
    a walk or probe that never reached the eligible region's best is caught almost surely, an
    ordinary ANN miss (one row) rarely (s / m).
    """
    info = mask_info(mask)  # sample and its vectors cached for a frozen mask
    rows = info.sample(size)
    better = q @ info.sample_vectors(vectors, size).T > page[0][:, need - 1 :] + SCORE_TOLERANCE
    qi, j = np.nonzero(better)
    missed = ~(page[1][qi] == rows[j][:, None]).any(axis=1)
    out = np.zeros(len(q), dtype=bool)
    out[qi[missed]] = True
    return out
