"""The HNSW (and flat) rounds behind ``ebr.index.query.planner.filtered_search``.

``graph_rounds`` returns the same ``probing.Rounds`` as ``probing.ivf_rounds``: efSearch scaled
by the filter's global and local eligible share; the queries a walk cannot serve go to the
exact scan. A walk has no cells to bound, so its ``finish`` leaves the pages as they are (the
sample check in ``probing.suspects`` covers them).
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from ebr.index.query.masks import mask_info
from ebr.index.query.params import PlannerParams, search_params
from ebr.index.query.probing import Found, Rounds

LOCAL_ROWS = 32  # a query's unfiltered nearest rows that measure its local eligible share


def graph_rounds(
    index: faiss.Index, q: np.ndarray, mask: np.ndarray, k: int, need: int, sel: Any,
    p: PlannerParams,
) -> Rounds:  # fmt: skip
    """``Rounds`` for an HNSW (effort = efSearch) or flat (one exact round) index, with the
    queries to answer exactly without a walk (bool [nq]).

    A filtered walk keeps the efSearch nodes nearest the query, eligible or not: where the
    filter excludes most of the query's neighbourhood, the beam fills with ineligible nodes and
    the page holds the few eligible rows met on the way (recall@10 0.4-0.7 on 1M jobs under a
    region filter, even at efSearch 2048). So efSearch grows with the local deficit: how many
    fewer eligible rows the query's LOCAL_ROWS unfiltered nearest hold than the filter's share
    predicts. A walk that would need more than ``max_ef_search``, or score more than
    ``exact_share`` of the eligible rows, is not run: the exact scan is cheaper, and exact.
    """
    own = search_params(index)
    n, m = len(mask), mask_info(mask).count
    s = m / n if n else 0.0
    hnsw = "ef_search" in own
    base = p.ef_search or own.get("ef_search", 1)
    ef = np.full(len(q), max(k, math.ceil(base * s**-p.selectivity_exponent)))
    skip = np.zeros(len(q), dtype=bool)
    if hnsw and m < n:
        probe: Any = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        probe.efSearch = LOCAL_ROWS
        near = index.search(q, LOCAL_ROWS, params=probe)[1]  # the unfiltered neighbourhood
        held = np.where(near >= 0, mask[np.maximum(near, 0)], False).sum(axis=1)
        deficit = np.maximum(1.0, s * LOCAL_ROWS / np.maximum(held, 0.5))
        ef = ef * 2 ** np.ceil(np.log2(deficit)).astype(np.int64)
        graph: Any = faiss.downcast_index(index)
        degree = graph.hnsw.nb_neighbors(0)  # base-layer links per node
        skip = (ef > p.max_ef_search) | (ef * degree > p.exact_share * m)
    ef = np.minimum(ef, p.max_ef_search)
    sp: Any = faiss.SearchParametersHNSW() if hnsw else faiss.SearchParameters()  # type: ignore[attr-defined]
    sp.sel = sel

    def search(todo: np.ndarray, effort: np.ndarray) -> Found:
        d_, i_ = np.empty((len(todo), need), np.float32), np.empty((len(todo), need), np.int64)
        for e in np.unique(effort):  # one efSearch per FAISS call
            at = np.flatnonzero(effort == e)
            if hnsw:
                sp.efSearch = int(e)
            d_[at], i_[at] = index.search(np.ascontiguousarray(q[todo[at]]), need, params=sp)
        return np.where(i_ >= 0, d_, -np.inf), i_

    def widen(todo: np.ndarray, s_: np.ndarray, r_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(len(todo), np.int64), np.zeros(len(todo), dtype=bool)

    def finish(todo: np.ndarray, s_: np.ndarray, r_: np.ndarray) -> tuple[Found, Any, Any]:
        return (s_, r_), np.zeros(len(todo), dtype=bool), np.zeros(len(todo), dtype=bool)

    cap = p.max_ef_search if hnsw else 0
    return search, widen, ef if hnsw else np.zeros(len(q), np.int64), cap, skip, finish
