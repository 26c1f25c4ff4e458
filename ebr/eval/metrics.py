"""Retrieval metrics over ranked id lists."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def recall_at_k(ranked: np.ndarray, positives: Sequence[set[int]], k: int) -> float:
    """Mean over searches of |top-k ∩ positives| / |positives|.

    ranked: int64 [q, >=k] ids best first (-1 = empty slot); positives: q sets of ids.
    """
    if len(ranked) != len(positives):
        raise ValueError(f"{len(ranked)} ranked lists but {len(positives)} positive sets")
    if ranked.ndim != 2 or ranked.shape[1] < k:
        raise ValueError(f"ranked must be [q, >={k}], got {ranked.shape}")
    scores = [
        len(pos.intersection(row[:k].tolist())) / len(pos)
        for row, pos in zip(ranked, positives, strict=True)
        if pos
    ]
    return float(np.mean(scores)) if scores else 0.0


def exact_topk(
    queries: np.ndarray, items: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k: queries [q, d], items [n, d], ids [n] -> ids int64 [q, k]
    and their scores float32 [q, k], best first."""
    k = min(k, len(items))
    out = np.empty((len(queries), k), dtype=np.int64)
    scores = np.empty((len(queries), k), dtype=np.float32)
    for a in range(0, len(queries), 256):  # bounded [256, n] score block
        s = queries[a : a + 256] @ items.T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(-s, top, axis=1).argsort(axis=1)
        best = np.take_along_axis(top, order, axis=1)
        out[a : a + 256] = ids[best]
        scores[a : a + 256] = np.take_along_axis(s, best, axis=1)
    return out, scores


def exact_topk_ids(queries: np.ndarray, items: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product top-k: queries [q, d], items [n, d], ids [n] -> ids [q, k]."""
    return exact_topk(queries, items, ids, k)[0]
