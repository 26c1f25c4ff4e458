"""The non-learned baselines EBR is compared with (popularity, the hybrid fusion), list
padding, and the served index as an evaluation searches it (``served_search``); the metrics
themselves are ``ebr.metrics``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ebr.data.pairs import POSITIVE
from ebr.index.query.fusion import FUSIONS, HYBRID_EBR_WEIGHT, HYBRID_FUSION, fuse_lists

FUSION_WEIGHTS = (0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # EBR weights the evaluations sweep


def pad_to(ranked: np.ndarray, k: int) -> np.ndarray:
    """[q, K'] -> [q, max(K', k)] int64, new slots -1 (a catalog smaller than k fills less)."""
    if ranked.shape[1] >= k:
        return ranked.astype(np.int64, copy=False)
    pad = np.full((len(ranked), k - ranked.shape[1]), -1, dtype=np.int64)
    return np.concatenate([ranked.astype(np.int64), pad], axis=1)


def popularity_ranking(
    impressions_train: pd.DataFrame, job_ids: np.ndarray, n_queries: int, k: int
) -> np.ndarray:
    """The same list for every query: jobs by engaged impressions (click/save/apply) -> [q, k].

    Pass the TRAIN split only: counting held-out engagement would leak the answer. Ties and
    never-engaged jobs follow in ascending job id; -1 pads a catalog smaller than k.
    """
    missing = {"job_id", "outcome"} - set(impressions_train.columns)
    if missing:
        raise ValueError(f"impressions_train lacks columns {sorted(missing)}")
    if n_queries < 0 or k < 1:
        raise ValueError(f"need n_queries >= 0 and k >= 1, got {n_queries} and {k}")
    ids = np.unique(np.asarray(job_ids, dtype=np.int64))
    engaged = impressions_train.loc[impressions_train["outcome"].isin(POSITIVE), "job_id"]
    counts = engaged.value_counts().reindex(ids, fill_value=0).to_numpy()
    order = np.lexsort((ids, -counts))  # last key is primary: most engaged, then lowest id
    top = pad_to(ids[order][None, :k], k)[0]
    return np.tile(top, (n_queries, 1))


def hybrid_ranking(
    ebr_ids: np.ndarray,
    ebr_scores: np.ndarray,
    bm25_ids: np.ndarray,
    bm25_scores: np.ndarray,
    k: int,
    alpha: float = HYBRID_EBR_WEIGHT,
    fusion: str = HYBRID_FUSION,
    bm25_coverage: np.ndarray | None = None,
    bm25_scale: np.ndarray | None = None,
) -> np.ndarray:
    """Two scored lists fused as serving fuses them -> int64 [q, k] (-1 padded).

    ``fusion`` "rrf": fused(d) = alpha / (RRF_K + rank_ebr(d)) + (1 - alpha) / (RRF_K +
    rank_bm25(d)), ranks 1-based by descending score within each list; "score": the same
    weights over min-max normalised scores (``ebr.index.query.fusion``). A list missing d
    contributes 0. Ties: better best rank, then lower id. ``bm25_coverage`` float [q] scales
    BM25's weight per query and ``bm25_scale`` float [q] divides its scores (instead of
    min-max), as serving does (``ebr.index.query.search.fuse``).
    """
    return hybrid_scored(
        ebr_ids, ebr_scores, bm25_ids, bm25_scores, k, alpha, fusion, bm25_coverage, bm25_scale
    )[0]


def hybrid_scored(
    ebr_ids: np.ndarray,
    ebr_scores: np.ndarray,
    bm25_ids: np.ndarray,
    bm25_scores: np.ndarray,
    k: int,
    alpha: float = HYBRID_EBR_WEIGHT,
    fusion: str = HYBRID_FUSION,
    bm25_coverage: np.ndarray | None = None,
    bm25_scale: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``hybrid_ranking`` with its fused scores: (ids int64 [q, k] (-1 pads), scores float32
    [q, k] (-inf pads)), best first; the scores are what serving's hybrid hits carry (what
    ``ebr.index.query.fusion.personal_rerank`` reorders for a signed-in request)."""
    for name, ids, sc in (("ebr", ebr_ids, ebr_scores), ("bm25", bm25_ids, bm25_scores)):
        if ids.ndim != 2 or ids.shape != sc.shape:
            raise ValueError(f"{name}_ids {ids.shape} and {name}_scores {sc.shape} must be [q, K]")
    if len(ebr_ids) != len(bm25_ids):
        raise ValueError(f"{len(ebr_ids)} ebr lists but {len(bm25_ids)} bm25 lists")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")

    pairs = [(ebr_ids, ebr_scores), (bm25_ids, bm25_scores)]
    orders = [np.argsort(-sc, axis=1, kind="stable") for _, sc in pairs]  # list order: ties
    lists = [np.take_along_axis(ids, o, 1) for (ids, _), o in zip(pairs, orders, strict=True)]
    scores = [np.take_along_axis(sc, o, 1) for (_, sc), o in zip(pairs, orders, strict=True)]
    weights, rows, scales = [alpha, 1 - alpha], [None, bm25_coverage], [None, bm25_scale]
    fused, ids = fuse_lists(lists, scores, weights, k, fusion, rows, scales)
    return ids, fused


def pad_scores(scores: np.ndarray, k: int) -> np.ndarray:
    """``pad_to`` for a score list: [q, K'] -> [q, max(K', k)] float, new slots -inf."""
    if scores.shape[1] >= k:
        return scores
    pad = np.full((len(scores), k - scores.shape[1]), -np.inf, dtype=scores.dtype)
    return np.concatenate([scores, pad], axis=1)


def fusion_sweep(
    ebr: tuple[np.ndarray, np.ndarray],
    bm25: tuple[np.ndarray, np.ndarray],
    k: int,
    score: Callable[[np.ndarray], float],
    bm25_coverage: np.ndarray | None = None,
    bm25_scale: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """{fusion: {EBR weight: ``score`` of the fused ranking}} for reciprocal-rank fusion and
    min-max score fusion over ``FUSION_WEIGHTS``; ``ebr`` and ``bm25`` are (ids, scores)
    [q, K] best first; ``bm25_coverage`` and ``bm25_scale`` as in ``hybrid_ranking``
    ("score_minmax" leaves the scale out). What chooses ``ebr.index.query.fusion``'s served fusion
    and weights."""
    lists, scores, rows = [ebr[0], bm25[0]], [ebr[1], bm25[1]], [None, bm25_coverage]
    variants = [(f, f, [None, bm25_scale]) for f in FUSIONS]
    if bm25_scale is not None:
        variants.append(("score_minmax", "score", [None, None]))
    return {
        name: {
            f"{w:g}": score(fuse_lists(lists, scores, [w, 1 - w], k, fusion, rows, scales)[1])
            for w in FUSION_WEIGHTS
        }
        for name, fusion, scales in variants
    }


def served_search(slot_path: Path) -> Callable[[np.ndarray, int], np.ndarray]:
    """(request vectors [q, d], k) -> job ids [q, k] through the path the serving ReleaseIndex
    takes (the live slot opened read-only, ``LiveSlot.query``): what an offline evaluation
    of "the served index" must call."""
    from ebr.index.live.slot import open_live

    live = open_live(slot_path, writable=False)
    return lambda q, k: live.query(q, k).job_ids
