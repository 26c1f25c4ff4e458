"""Top-k over an index minus a few excluded rows (live tombstones): the index's own search,
a little deeper, with the excluded rows dropped.

A live slot with deletes (or upserts that supersede snapshot rows) searches its snapshot
minus those rows. Through the planner that is a filter like any other, and it pays full-size
work per call (mask count, bitmap, eligible rows per IVF cell, check sample: ~5 ms a query on
1M rows, ~70x the search; ``benchmarks/query_overhead.py``). But deletes exclude a small share
of rows, spread over the catalogue: a query's nearest rows hold about that share of deleted
ones. So ``postfiltered_search`` asks the index for ``k + extra`` rows, ``extra`` well above
the deleted rows expected among them (mean + 4 sd + 4, Poisson; never more than are
deleted), and keeps the first ``min(k, eligible)`` eligible ones, at the cost of one search
of depth ``k + extra``. IVF probes the cells the planner's first round would (nearest cells
holding eligible rows until they hold its target, at least nprobe; the eligible rows per
cell cached for a frozen mask, ``masks.py``); HNSW walks at least as wide as its first walk.
A page is then the best eligible rows of what the planner's first round reaches (IVF-PQ:
re-ranked from more candidates), and the planner's check runs on it (``check_rows`` sampled
eligible rows, cached for a frozen mask; a page one of them beats is answered exactly), so
recall matches the planner's.

A query with fewer eligible rows than that in its ``k + extra`` (deletes clustered near it:
a company's jobs, a region) is answered by ``filtered_search`` (rounds with a selector, the
check, exact fallback), as are masks this path does not serve (``postfilter_applies``): so
every query still gets exactly min(k, eligible) rows, all eligible.

    scores, rows, plan = postfiltered_search(slot.index, slot.vectors, q, 10, ~deleted)
"""

from __future__ import annotations

import math
from dataclasses import replace
from math import ceil
from typing import Any

import faiss
import numpy as np

from ebr.index.query.exact import exact_masked
from ebr.index.query.masks import mask_info
from ebr.index.query.params import PlannerParams
from ebr.index.query.planner import (
    DEFAULT_PARAMS,
    Plan,
    _full_pages,
    _parts,
    _validate,
    filtered_search,
    own_search,
)
from ebr.index.query.probing import _top, ivf_layout, suspects

MIN_SHARE = 0.5  # eligible share below which the planner (a selector) beats searching deeper
DENSE = 0.9  # eligible share from which an IVF page is the index's own, a little wider, search
MAX_DEPTH = 4096  # deepest post-filtered page; deeper ones take the planner
STRATEGY = "ann_postfiltered"


def depth(k: int, n: int, m: int) -> int:
    """Rows to ask the index for so that a query whose nearest rows hold the catalogue's
    share of excluded ones (``n - m`` of ``n``) keeps ``k`` eligible ones almost surely."""
    s = m / n
    mean = k * (1 - s) / s  # excluded rows expected among the first ~k / s
    extra = min(n - m, math.ceil(mean + 4 * math.sqrt(mean) + 4))
    return min(n, k + extra)


def postfilter_applies(kind: str, n: int, m: int, k: int, p: PlannerParams) -> bool:
    """Whether ``postfiltered_search`` serves this mask itself: an ANN index, at least
    ``MIN_SHARE`` eligible and a page no deeper than ``MAX_DEPTH``; on a slot small enough
    for the planner's exact scan, only a dense mask (above ``exact_max_selectivity``: its
    exact scan costs what every row costs, the index's search what it costs unfiltered; a
    20k-job slot with one delete scanned all its rows exactly, 12x its ANN search)."""
    if kind == "flat" or m == n or m < MIN_SHARE * n or depth(k, n, m) > MAX_DEPTH:
        return False
    small = m <= max(p.exact_max_eligible, p.exact_max_fraction * n)
    return not small or m / n > p.exact_max_selectivity


def _ivf_search(
    index: faiss.Index, ivf: Any, concrete: Any, kind: str, q: np.ndarray, kk: int,
    eligible: np.ndarray, p: PlannerParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:  # fmt: skip
    """Depth-``kk`` pages from the cells the planner's first round would probe: the nearest
    cells holding eligible rows until they hold its target (at least the index's nprobe),
    so each page covers what the planner's does. (scores, rows, queries whose target lies
    past the cells looked at (they take the planner), fewest and most probes.)"""
    info = mask_info(eligible)
    cell, _, _ = ivf_layout(index)
    n, m, nlist, base = len(cell), info.count, int(ivf.nlist), p.nprobe or int(ivf.nprobe)
    counts = info.cell_counts(cell, nlist)  # cached for a frozen mask
    live = int(np.count_nonzero(counts))
    s, a = m / n, p.selectivity_exponent
    if live == nlist and s >= DENSE:
        return _own_ivf_search(index, concrete, kind, q, kk, min(nlist, ceil(base * s**-a) + 1), p)
    target = min(m, base * (n / nlist) * s ** (1 - a))
    guess = min(live, 2 * math.ceil(base * s**-a))  # as the planner's first sort
    dis, cells = ivf.quantizer.search(q, min(nlist, guess + nlist - live))
    if live < nlist:  # skip cells without eligible rows, as the planner does
        order = np.argsort(counts[cells] == 0, axis=1, kind="stable")[:, :guess]
        dis, cells = np.take_along_axis(dis, order, 1), np.take_along_axis(cells, order, 1)
    probes = (np.cumsum(counts[cells], axis=1) < target).sum(axis=1) + 1
    far = probes > guess
    probes = np.minimum(np.maximum(probes, min(base, live)), guess)  # np.clip: 5 us more
    width = int(probes.max())
    assign = np.where(np.arange(width) < probes[:, None], cells[:, :width], -1)
    dis = np.ascontiguousarray(dis[:, :width])
    k_factor = (p.k_factor or float(concrete.k_factor)) if kind == "ivfpq" else None
    kq = math.ceil(kk * k_factor) if k_factor else kk
    sp = faiss.SearchParametersIVF()
    sp.nprobe = width
    d_, i_ = np.empty((len(q), kq), np.float32), np.empty((len(q), kq), np.int64)
    ptr = faiss.swig_ptr  # the Python wrapper of search_preassigned refuses params
    ivf.search_preassigned_c(len(q), ptr(q), kq, ptr(assign), ptr(dis), ptr(d_), ptr(i_),
                             False, sp)  # fmt: skip
    if k_factor:  # re-rank exactly, as IndexRefineFlat.search does (probing.ivf_rounds)
        refine: Any = faiss.downcast_index(index.refine_index)  # type: ignore[attr-defined]
        ids = np.maximum(i_, 0)  # held: swig_ptr keeps no reference to its array
        refine.compute_distance_subset(len(q), ptr(q), kq, ptr(d_), ptr(ids))
        d_, i_ = _top(np.where(i_ >= 0, d_, -np.inf), i_, kk)
    return d_, i_, far, int(probes.min()), int(probes.max())


def _own_ivf_search(
    index: faiss.Index, concrete: Any, kind: str, q: np.ndarray, kk: int, width: int,
    p: PlannerParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:  # fmt: skip
    """``_ivf_search`` for a dense mask (every cell holds eligible rows, few excluded): the
    index's own search, ``width`` cells wide (the planner's first round: the index's nprobe
    widened for the excluded share) and ``kk`` deep, in one call instead of a quantizer
    search, a per-query probe count and ``search_preassigned`` (~0.3 ms of Python a query on
    a 20k slot, twice the search). The check and the planner's retry follow as for any page."""
    sp = faiss.SearchParametersIVF()
    sp.nprobe = width
    params: Any = sp
    if kind == "ivfpq":  # refine as the index would, from its own k_factor (or the planner's)
        params = faiss.IndexRefineSearchParameters()
        params.k_factor = p.k_factor or float(concrete.k_factor)
        params.base_index_params = sp
    scores, rows = own_search(index, q, kk, params)
    del sp  # held until here: the refine parameters keep only a pointer to it
    return scores, rows, np.zeros(len(q), dtype=bool), width, width


def _hnsw_search(
    index: faiss.Index, concrete: Any, q: np.ndarray, kk: int, s: float, p: PlannerParams
) -> tuple[np.ndarray, np.ndarray, int]:
    """Depth-``kk`` pages of an HNSW walk at least as wide as the planner's first one."""
    own = p.ef_search or int(concrete.hnsw.efSearch)
    ef = min(max(kk, math.ceil(own * s**-p.selectivity_exponent)), p.max_ef_search)
    sp = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
    sp.efSearch = ef
    scores, rows = index.search(q, kk, params=sp)
    return scores, rows, ef


def postfiltered_search(
    index: faiss.Index,
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    eligible: np.ndarray,
    params: PlannerParams | None = None,
) -> tuple[np.ndarray, np.ndarray, Plan]:
    """``filtered_search`` for a mask excluding few rows (see the module docstring): same
    arguments and guarantees; the plan's strategy is ``ann_postfiltered`` where this path
    answered, with ``retried_queries`` the queries it left to the planner."""
    p = params or DEFAULT_PARAMS
    q, n = _validate(index, vectors, queries, k, eligible)
    kind, ivf, concrete = _parts(index)
    m = mask_info(eligible).count  # cached for a frozen mask (a live view's)
    if not len(q) or not postfilter_applies(kind, n, m, k, p):
        return filtered_search(index, vectors, q, k, eligible, p)
    kk = depth(k, n, m)
    far, lo, hi, ef = np.zeros(len(q), dtype=bool), None, None, None
    if ivf is not None:
        scores, rows, far, lo, hi = _ivf_search(index, ivf, concrete, kind, q, kk, eligible, p)
    else:
        scores, rows, ef = _hnsw_search(index, concrete, q, kk, m / n, p)
    ok = (rows >= 0) & eligible[np.maximum(rows, 0)]
    need = min(k, m)
    if ok[:, :k].all():  # the common case: no excluded row in the first k
        scores, rows = scores[:, :k], rows[:, :k]
    else:  # eligible rows first, in score order (a stable sort keeps their order)
        order = np.argsort(~ok, axis=1, kind="stable")[:, :k]
        kept = np.take_along_axis(ok, order, 1)
        kept[:, need:] = False
        scores = np.where(kept, np.take_along_axis(scores, order, 1), -np.inf)
        rows = np.where(kept, np.take_along_axis(rows, order, 1), -1)
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    rows = np.ascontiguousarray(rows)
    k_factor = (p.k_factor or float(concrete.k_factor)) if kind == "ivfpq" else None
    plan = Plan(STRATEGY, n, m, m / n, k, lo, hi, ef, k_factor, 1, nprobe_final=hi)
    short = (rows[:, need - 1] < 0) | far
    check = min(p.check_rows, m)  # the planner's check of its filtered pages, the same way
    if check and not short.all():
        full = np.flatnonzero(~short)
        page = scores[full, :need], rows[full, :need]
        suspect = full[suspects(vectors, eligible, q[full], page, need, check)]
        if len(suspect):  # a sampled row beats the page: exact, as the planner answers it
            scores[suspect], rows[suspect] = exact_masked(vectors, eligible, q[suspect], k)
        counts = (1, 0, len(suspect), len(suspect) > 0, 0, hi, 0, check, len(suspect))
        plan = Plan(STRATEGY, n, m, m / n, k, lo, hi, ef, k_factor, *counts)
    retry = np.flatnonzero(short)
    if len(retry):  # excluded rows crowd these queries' nearest: the planner's safeguards
        scores[retry], rows[retry], sub = filtered_search(index, vectors, q[retry], k, eligible, p)
        plan = _merged(plan, sub, len(retry))
    if not _full_pages(rows, n, need):  # eligibility holds by construction (and the planner's)
        raise AssertionError(f"{STRATEGY}: pages not {need} distinct rows in [0, {n}) first")
    return scores, rows, plan


def _most(*values: int | None) -> int | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _merged(fast: Plan, sub: Plan, retried: int) -> Plan:
    """The plan of a call whose ``retried`` short queries the planner answered (``sub``)."""
    fewest = [v for v in (fast.nprobe, sub.nprobe) if v is not None]
    return replace(
        sub,
        strategy=STRATEGY,
        nprobe=min(fewest) if fewest else None,
        nprobe_max=_most(fast.nprobe_max, sub.nprobe_max),
        ef_search=_most(fast.ef_search, sub.ef_search),
        k_factor=fast.k_factor,
        rounds=1 + sub.rounds,
        retried_queries=retried,
        fallback_queries=fast.fallback_queries + sub.fallback_queries,
        fallback=fast.fallback or sub.fallback,
        check_rows=max(fast.check_rows, sub.check_rows),
        suspect_queries=fast.suspect_queries + sub.suspect_queries,
        nprobe_final=_most(fast.nprobe_final, sub.nprobe_final),
    )
