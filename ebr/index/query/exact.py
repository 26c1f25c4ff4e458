"""Exact search over the rows a mask keeps: the planner's fallback when an ANN page cannot be
trusted, and the answer for pages the check flags.

A sparse mask gathers its rows (``probing.exact_subset``). A dense one (a live slot's
not-deleted rows, a broad filter) is scanned in place, slice by slice of the exact vectors,
asking for the skipped rows' worth of extra hits and dropping them: gathering 99% of a 1M-row
file copied ~250 MB per query.
"""

from __future__ import annotations

import faiss
import numpy as np

from ebr.index.query.probing import EXACT_CHUNK_ROWS, Found, _top, empty_page, exact_subset

# Ineligible rows in one slice up to which it is scanned in place: one query, one thread,
# a 262k-row slice of a memory-mapped slot: faiss.knn asking for 2.6k (16k) extra hits took
# 3.3 (6.9) ms, gathering the slice's eligible rows ~70 ms (1% of 1M rows deleted).
MAX_SKIPPED = 16_384


def exact_masked(vectors: np.ndarray, mask: np.ndarray, q: np.ndarray, k: int) -> Found:
    """Exact top-``k`` of ``q`` [nq, d] over the rows where ``mask`` (bool [n]) holds: scores
    float32 [nq, k] descending (-inf pads), rows int64 [nq, k] (-1 pads)."""
    n = len(mask)
    if 2 * int(np.count_nonzero(mask)) <= n:
        return exact_subset(vectors, np.flatnonzero(mask), q, k)
    best = empty_page(q, k)
    for start in range(0, n, EXACT_CHUNK_ROWS):
        stop = min(n, start + EXACT_CHUNK_ROWS)
        keep = mask[start:stop]
        skipped = (stop - start) - int(np.count_nonzero(keep))
        if skipped == stop - start:
            continue
        if skipped > MAX_SKIPPED:
            s, r = exact_subset(vectors, start + np.flatnonzero(keep), q, k)
        else:
            part = np.ascontiguousarray(vectors[start:stop], dtype=np.float32)  # a view
            s, i = faiss.knn(q, part, min(k + skipped, stop - start), faiss.METRIC_INNER_PRODUCT)
            ok = i >= 0
            ok[ok] = keep[i[ok]]
            s, r = np.where(ok, s, -np.inf), np.where(ok, start + i, -1)
        best = _top(np.concatenate([best[0], s], 1), np.concatenate([best[1], r], 1), k)
    return best
