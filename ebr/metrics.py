"""The one home of retrieval metrics and exact search: imported by the index (recall gates),
the models (held-out recall while training) and the evaluation alike.

- ``exact_topk``: exact inner-product top-k (FAISS flat, BLAS for batches), rows or ids;
- ``recall_of`` / ``recalls_per_query``: overlap of an ANN result with the exact one (ids
  [q, k] each); ``recall_lower_bound``: the figure a recall gate may claim from a sample;
  ``drop_own``: leave-one-out results for catalogue rows used as queries;
- ``recall_at`` / ``recall_at_k``, ``ndcg_at``, ``mrr``: ranked id lists against positives.

Every ranking metric takes ``ranked`` int64 [q, K], best first, with -1 for empty slots, and
``positives``: q sets of relevant ids. Queries with no positives are skipped (they carry no
signal); a metric over zero scored queries is 0.0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import faiss
import numpy as np

EXACT_BLAS_THRESHOLD = 20  # query batches at least this big take faiss's BLAS (GEMM) path


def exact_topk(
    vectors: np.ndarray, queries: np.ndarray, k: int, ids: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of ``queries`` [q, d] over ``vectors`` [n, d] (both float32).

    Returns:
        scores [q, k] float32 (descending) and row indices [q, k] int64, or with ``ids`` [n]
        the ids of those rows; when ``k > n`` the tail holds -1 and score ``-3.4e38``
        (FAISS's empty-slot value).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or vectors.ndim != 2 or queries.shape[1] != vectors.shape[1]:
        raise ValueError(
            f"queries [q, d] and vectors [n, d] must share d, got {queries.shape} and "
            f"{vectors.shape}"
        )
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    # faiss 1.15 defaults this threshold to 128k queries, so normal batches take the scalar
    # path; GEMM was ~5x faster for 1k queries (STACK.md). It is a process global: restore it.
    previous = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = EXACT_BLAS_THRESHOLD
    try:
        scores, idx = index.search(queries, k)
    finally:
        faiss.cvar.distance_compute_blas_threshold = previous
    idx = idx.astype(np.int64, copy=False)
    if ids is not None:
        idx = np.where(idx >= 0, np.asarray(ids, dtype=np.int64)[np.maximum(idx, 0)], -1)
    return scores, idx


def recall_of(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean |found ∩ truth| / k over rows of ids ``found`` and ``truth`` [q, k] (-1 = empty)."""
    return float(recalls_per_query(found, truth).mean())


def recalls_per_query(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """|found ∩ truth| / k of each row of ids ``found`` and ``truth`` [q, k] -> float64 [q]."""
    if found.shape != truth.shape or found.ndim != 2:
        raise ValueError(f"found and truth must both be [q, k], got {found.shape}, {truth.shape}")
    hits = [
        len(np.intersect1d(t[t >= 0], f[f >= 0], assume_unique=True))
        for t, f in zip(truth, found, strict=True)
    ]
    return np.asarray(hits, dtype=np.float64) / truth.shape[1]


def recall_lower_bound(per_query: np.ndarray, z: float = 2.326) -> float:
    """One-sided lower confidence bound of mean recall: mean - z * standard error.

    The queries a recall is measured on are a sample; a figure measured on 1,000 of them moves
    by ~0.003 between samples (per-query recall@10 spreads ~0.09 around 0.95). ``z`` = 2.326
    bounds the mean from below at 99%: a setting whose bound reaches a target serves at least
    the target on new queries of the same kind 99 times in 100. One query (or identical
    recalls) has no spread: the bound is the mean.
    """
    per_query = np.asarray(per_query, dtype=np.float64)
    if per_query.ndim != 1 or len(per_query) == 0:
        raise ValueError(f"per_query must be a non-empty 1-d array, got {per_query.shape}")
    if len(per_query) == 1:
        return float(per_query[0])
    se = per_query.std(ddof=1) / np.sqrt(len(per_query))
    return float(per_query.mean() - z * se)


def drop_own(ids: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Ids [q, k + 1] with each row's own id ``own`` [q] removed -> [q, k].

    Leave-one-out search: a catalogue row used as a query finds itself first; searching one
    deeper and dropping it gives the results of a query that is not in the catalogue. A row
    whose own id is missing (an approximate index can miss it) drops its last id instead.
    """
    if ids.ndim != 2 or ids.shape[1] < 2 or own.shape != (len(ids),):
        raise ValueError(f"ids must be [q, k + 1] and own [q], got {ids.shape} and {own.shape}")
    is_own = ids == np.asarray(own)[:, None]
    # A stable sort on the flag moves the own id (at most one) to the end, keeping the order.
    order = np.argsort(is_own, axis=1, kind="stable")
    return np.take_along_axis(ids, order, axis=1)[:, :-1]


def _check(ranked: np.ndarray, positives: Sequence[set[int]], k: int | None = None) -> None:
    """Raise ValueError unless ranked is [q, >=k] and there is one positive set per row."""
    if not isinstance(ranked, np.ndarray) or ranked.ndim != 2:
        raise ValueError(
            f"ranked must be a 2-d array [q, K], got {getattr(ranked, 'shape', ranked)}"
        )
    if not np.issubdtype(ranked.dtype, np.integer):
        raise ValueError(f"ranked must hold integer ids, got dtype {ranked.dtype}")
    if len(ranked) != len(positives):
        raise ValueError(f"{len(ranked)} ranked lists but {len(positives)} positive sets")
    if k is not None and (k < 1 or ranked.shape[1] < k):
        raise ValueError(f"k must be in [1, {ranked.shape[1]}] for ranked {ranked.shape}, got {k}")


def recall_at(
    ranked: np.ndarray, positives: Sequence[set[int]], ks: Sequence[int]
) -> dict[int, float]:
    """{k: mean over queries of |top-k ∩ positives| / |positives|} for every k in ``ks``."""
    if not ks:
        raise ValueError("ks must name at least one cutoff")
    for k in ks:
        _check(ranked, positives, k)
    out: dict[int, list[float]] = {int(k): [] for k in ks}
    for row, pos in zip(ranked, positives, strict=True):
        if not pos:
            continue
        for k in out:
            out[k].append(len(pos.intersection(row[:k].tolist())) / len(pos))
    return {k: float(np.mean(v)) if v else 0.0 for k, v in out.items()}


def recall_at_k(ranked: np.ndarray, positives: Sequence[set[int]], k: int) -> float:
    """``recall_at`` at one cutoff."""
    return recall_at(ranked, positives, [k])[k]


def ndcg_at(
    ranked: np.ndarray,
    positives: Sequence[set[int]],
    k: int,
    gains: Sequence[Mapping[int, float]] | None = None,
) -> float:
    """Mean NDCG@k with DCG = sum_i rel(id_i) / log2(i + 2) over the top k (i from 0).

    Binary relevance (1 for a positive) by default. ``gains`` (one dict per query) grades it:
    a positive's relevance is ``gains[q].get(id, 1.0)``; ids outside ``positives`` stay 0.
    The ideal DCG orders the query's positive gains best first.
    """
    _check(ranked, positives, k)
    if gains is not None and len(gains) != len(positives):
        raise ValueError(f"{len(gains)} gain maps but {len(positives)} positive sets")
    discount = 1.0 / np.log2(np.arange(k) + 2.0)
    scores = []
    for q, (row, pos) in enumerate(zip(ranked, positives, strict=True)):
        if not pos:
            continue
        g = gains[q] if gains is not None else {}
        if any(v < 0 for v in g.values()):
            raise ValueError(f"gains must be >= 0, query {q} has {dict(g)}")
        rel = np.array([g.get(int(i), 1.0) if i in pos else 0.0 for i in row[:k]])
        ideal = np.sort(np.array([g.get(i, 1.0) for i in pos]))[::-1][:k]
        idcg = float(ideal @ discount[: len(ideal)])
        if idcg > 0:
            scores.append(float(rel @ discount[: len(rel)]) / idcg)
    return float(np.mean(scores)) if scores else 0.0


def mrr(ranked: np.ndarray, positives: Sequence[set[int]]) -> float:
    """Mean reciprocal rank of the first positive in the list (0 when none is retrieved)."""
    _check(ranked, positives)
    scores = []
    for row, pos in zip(ranked, positives, strict=True):
        if not pos:
            continue
        hits = np.flatnonzero([i in pos for i in row.tolist()])
        scores.append(1.0 / (hits[0] + 1) if len(hits) else 0.0)
    return float(np.mean(scores)) if scores else 0.0
