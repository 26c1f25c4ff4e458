"""Exact search over a live slot's delta (the rows upserted since its snapshot) and the merge
with the snapshot's results: pure array functions (query time; the log that fills the delta is
``ebr.index.live``)."""

from __future__ import annotations

import faiss
import numpy as np

FEW_DEAD = 1024  # superseded delta positions up to which the delta search over-fetches
SCORE_CELLS = 1 << 22  # cap on the [queries, delta] score matrix of one exact-search chunk (16 MiB)


def search_delta(
    ids: np.ndarray, vecs: np.ndarray, alive: np.ndarray, q: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-min(k, size) over the delta -> scores, job_ids [q, min(k, size)].

    Args:
        ids: [>= size] int64 job ids by position. vecs: [>= size, d] float32 vectors.
        alive: [size] bool, positions that hold a live record (others never returned).
        q: float32 [q, d] checked queries.
    """
    size = len(alive)
    kk, n_dead = min(k, size), size - int(alive.sum())
    if kk == 0 or n_dead == size:
        return np.full((len(q), kk), -np.inf, np.float32), np.full((len(q), kk), -1, np.int64)
    if n_dead <= FEW_DEAD:
        # faiss's SIMD scan with a top-k heap is ~10x numpy's matmul + argpartition here;
        # asking for k + n_dead keeps k live hits however the dead positions rank.
        scores, pos = faiss.knn(q, vecs[:size], min(size, k + n_dead), faiss.METRIC_INNER_PRODUCT)
        ok = pos >= 0
        ok[ok] = alive[pos[ok]]
        first = np.argsort(~ok, axis=1, kind="stable")[:, :kk]
        keep = np.take_along_axis(ok, first, 1)
        top_s = np.where(keep, np.take_along_axis(scores, first, 1), -np.inf).astype(np.float32)
        return top_s, np.where(keep, ids[np.take_along_axis(pos, first, 1)], -1)
    scores = np.full((len(q), kk), -np.inf, np.float32)
    out = np.full((len(q), kk), -1, np.int64)
    vecs, dead = vecs[:size], ~alive
    step = max(1, SCORE_CELLS // size)
    for a in range(0, len(q), step):  # many dead positions: mask them in a full score matrix
        s = q[a : a + step] @ vecs.T  # [chunk, size] float32 inner products
        s[:, dead] = -np.inf
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        top_s = np.take_along_axis(s, top, 1)
        order = np.argsort(-top_s, axis=1, kind="stable")
        top, top_s = np.take_along_axis(top, order, 1), np.take_along_axis(top_s, order, 1)
        scores[a : a + step] = top_s
        out[a : a + step] = np.where(np.isfinite(top_s), ids[top], -1)
    return scores, out


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of several (scores [q, *], job_ids [q, *]) results; earlier parts win ties."""
    scores = np.concatenate([s for s, _ in parts], axis=1)
    ids = np.concatenate([i for _, i in parts], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
