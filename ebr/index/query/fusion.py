"""Fusion of ranked lists (hybrid retrieval: EBR + BM25): weighted reciprocal rank (``rrf``)
or weighted min-max normalised scores (``score_fusion``).

rrf: fused(d) = sum_i w_i / (RRF_K + rank_i(d)), ranks 1-based within list i; score: fused(d)
= sum_i w_i * minmax_i(score_i(d)), each list's scores mapped to [0, 1] within the query (the
two scales, cosine and BM25, are unrelated). A list missing d adds 0; ``row_weights`` scale a
list's weight query by query (serving scales BM25's by its term coverage). Ties: the better
best position, then the lower id. Used by serving (``ebr.index.query.search``) and by the
evaluation (``ebr.eval.ranking.hybrid_ranking``), so both measure one fusion.

Size: both fusions (reciprocal rank, min-max scores) and the signed-in rerank's weights share
normalisation and tie rules.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ebr.data.geo import haversine_km

RRF_K = 60  # reciprocal-rank-fusion constant (Cormack et al. 2009): damps the top ranks' weight
# What hybrid retrieval serves, chosen on the typed queries (benchmarks.typed_queries, 20k
# jobs; fusion_sweep in its JSON): score fusion with BM25 divided by its attainable score and
# weighted by term coverage, EBR weight 0.25 (p@10 0.851; 0.851 / 0.850 at 0.2 / 0.3, and
# 0.854 at 0.25 on a second query draw), beat min-max score fusion (best 0.843 at 0.5) and
# RRF (best 0.837 at 0.4); max-normalised BM25 or coverage squared moved it by < 0.003.
HYBRID_FUSION = "score"  # rrf | score
HYBRID_EBR_WEIGHT = 0.25  # w of the EBR list (BM25 gets 1 - w)
# With a member the EBR list also carries the personalisation BM25 lacks: on the logged
# searches (query + member) score fusion's recall@100 rises with w, 0.705 at 0.5 to 0.725 at
# 0.9 (EBR alone 0.7225), while typed queries (anonymous) peak at 0.5.
HYBRID_EBR_WEIGHT_MEMBER = 0.9
FUSIONS = ("rrf", "score")
# Signed-in search: the query leads, the member reorders. Each retrieval's query-led list
# (the request embedded without its member, BM25, or their hybrid) is PERSONAL_DEPTH deep; for
# ebr and hybrid the member-aware embedding's own top MEMBER_DEPTH join it with their own
# query-led scores (``with_member_led``); ``personal_rerank`` mixes the query-led scores (1 - w)
# with the member's side (w = PERSONAL_WEIGHT): each candidate's cosine to the member-aware
# request embedding + GEO_WEIGHT * its ``commute_decay`` (as search engines' geo decay
# functions: 1 within the member's commute radius or for a remote job they accept, halving each
# further radius; the towers alone place a job near the member only weakly, corr 0.29 with
# being within commute). Chosen with benchmarks.signed_in on the new world (20k jobs, hybrid):
# w 0.5 and geo 0.3 keep typed p@10 at 0.96x anonymous with personal fit 1.54x (geo 0: 0.98x
# and 1.24x; w 0.6: 0.93x); the member-led candidates and the decay lift logged recall@100 of
# the served signed-in hybrid from 0.85 to 0.94 (today's member-led hybrid: 0.91).
PERSONAL_DEPTH = 200
MEMBER_DEPTH = 100
PERSONAL_WEIGHT = 0.5
GEO_WEIGHT = 0.3
DEFAULT_COMMUTE_KM = 30.0  # a member without a commute radius


RowWeights = Sequence[np.ndarray | None] | None


def rrf(
    lists: Sequence[np.ndarray], weights: Sequence[float], k: int, row_weights: RowWeights = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse ranked lists -> scores float32 [q, k] (-inf pads), ids int64 [q, k] (-1 pads).

    Args:
        lists: int64 [q, K_i] ids best first, -1 for empty slots (ignored).
        weights: one weight >= 0 per list.
        k: results per query (>= 1).
        row_weights: per list, None or float [q] >= 0 multiplying its weight query by query.
    """
    ranks = [np.broadcast_to(1.0 / (RRF_K + np.arange(1, x.shape[1] + 1)), x.shape) for x in lists]
    return _fuse([_first_only(x) for x in lists], ranks, weights, k, row_weights)


def _first_only(ids: np.ndarray) -> np.ndarray:
    """``ids`` with repeats in a row turned into padding (a repeat keeps its first rank)."""
    out = ids.copy()
    for q in range(len(out)):
        seen: set[int] = set()
        for j, d in enumerate(out[q].tolist()):
            if d in seen:
                out[q, j] = -1
            seen.add(d)
    return out


def _fuse(
    lists: Sequence[np.ndarray],
    values: Sequence[np.ndarray],
    weights: Sequence[float],
    k: int,
    row_weights: RowWeights = None,
) -> tuple[np.ndarray, np.ndarray]:
    """sum_i w_i * r_i[q] * values_i[d] per query q over the ids of every list (-1 ignored;
    r_i = ``row_weights[i]``, 1 when None); top k by fused value, then the better best
    position, then the lower id."""
    if len(lists) != len(weights) or not lists:
        raise ValueError(f"need one weight per list, got {len(lists)} lists, {len(weights)}")
    if any(w < 0 for w in weights):
        raise ValueError(f"weights must be >= 0, got {list(weights)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = len(lists[0])
    if any(ids.ndim != 2 or len(ids) != n for ids in lists):
        raise ValueError(f"lists must all be [q, K] with q = {n}: {[x.shape for x in lists]}")
    rows = list(row_weights) if row_weights is not None else [None] * len(lists)
    if len(rows) != len(lists):
        raise ValueError(f"{len(rows)} row weights for {len(lists)} lists")
    mult = [np.ones(n) if r is None else np.asarray(r, dtype=np.float64) for r in rows]
    if any(m.shape != (n,) or not (m >= 0).all() for m in mult):
        raise ValueError(f"row weights must be [{n}] values >= 0")
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    out = np.full((n, k), -1, dtype=np.int64)
    for q in range(n):
        # Every list's (id, w * value, position), in list order: the sums run in the order
        # a per-id accumulation over the lists would add them.
        parts = []
        for ids, vals, w0, m in zip(lists, values, weights, mult, strict=True):
            w = w0 * m[q]
            if w == 0:  # a list weighted 0 adds no candidates either (alpha 1 = EBR alone)
                continue
            keep = np.flatnonzero(ids[q] >= 0)
            parts.append((ids[q][keep], w * np.asarray(vals[q], dtype=np.float64)[keep], keep))
        if not parts:
            continue
        found, at = np.unique(np.concatenate([p[0] for p in parts]), return_inverse=True)
        fused = np.bincount(at, weights=np.concatenate([p[1] for p in parts]),
                            minlength=len(found))  # fmt: skip
        best = np.full(len(found), np.iinfo(np.int64).max)
        np.minimum.at(best, at, np.concatenate([p[2] for p in parts]))
        top = np.lexsort((found, best, -fused))[:k]
        out[q, : len(top)] = found[top]
        scores[q, : len(top)] = fused[top]
    return scores, out


def score_fusion(
    lists: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    weights: Sequence[float],
    k: int,
    row_weights: RowWeights = None,
    scales: RowWeights = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse scored lists by a weighted sum of normalised scores -> scores float32 [q, k]
    (-inf pads), ids int64 [q, k] (-1 pads).

    A list with a ``scales`` entry (float [q] > 0) is divided by it: an absolute scale, e.g.
    the best BM25 score the query could reach (``TermIndex.attainable``), so a job matching
    only some query words counts for that share however the rest of the list scores. Other
    lists are mapped to [0, 1] within the query's list (its best 1, its last 0; a list of
    equal scores all 1). A list missing d adds 0. Unlike ``rrf`` it keeps the gaps.
    """
    if len(scores) != len(lists):
        raise ValueError(f"{len(lists)} id lists but {len(scores)} score lists")
    for ids, sc in zip(lists, scores, strict=True):
        if ids.shape != sc.shape:
            raise ValueError(f"ids {ids.shape} and scores {sc.shape} must match")
    divisors = list(scales) if scales is not None else [None] * len(lists)
    if len(divisors) != len(lists):
        raise ValueError(f"{len(divisors)} scales for {len(lists)} lists")
    normed = []
    for ids, sc, div in zip(lists, scores, divisors, strict=True):
        if div is not None:
            d = np.asarray(div, dtype=np.float64)
            if d.shape != (len(ids),) or not (d > 0).all():
                raise ValueError(f"scales must be [{len(ids)}] values > 0")
            normed.append(np.where(ids >= 0, sc, 0.0) / d[:, None])
            continue
        valid = ids >= 0  # padding is skipped by _fuse whatever its value
        s = np.where(valid, sc, 0.0).astype(np.float64)
        lo = np.where(valid, s, np.inf).min(1, keepdims=True)
        hi = np.where(valid, s, -np.inf).max(1, keepdims=True)
        spread = hi > lo
        normed.append(np.where(spread, (s - lo) / np.where(spread, hi - lo, 1.0), 1.0))
    return _fuse(lists, normed, weights, k, row_weights)


def fuse_lists(
    lists: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    weights: Sequence[float],
    k: int,
    fusion: str = HYBRID_FUSION,
    row_weights: RowWeights = None,
    scales: RowWeights = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``rrf`` or ``score_fusion`` by name (``FUSIONS``); ``scales`` only for "score"."""
    if fusion == "rrf":
        return rrf(lists, weights, k, row_weights)
    if fusion == "score":
        return score_fusion(lists, scores, weights, k, row_weights, scales)
    raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")


def _row_minmax(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each row's valid values mapped to [0, 1] (best 1, worst 0; all equal -> 1); 0 elsewhere."""
    v = np.where(valid, values, 0.0).astype(np.float64)
    lo = np.where(valid, v, np.inf).min(1, keepdims=True)
    hi = np.where(valid, v, -np.inf).max(1, keepdims=True)
    spread = hi > lo
    out = np.where(spread, (v - lo) / np.where(spread, hi - lo, 1.0), 1.0)
    return np.where(valid, out, 0.0)


def with_member_led(
    ids: np.ndarray,
    scores: np.ndarray,
    member_ids: np.ndarray,
    member_scores: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Query-led candidates plus the member-led list's jobs they lack -> (ids int64 [q, N + M],
    scores float [q, N + M]). A member-led job enters with its own query-led score where
    ``member_scores`` knows it (float [q, M], NaN: unknown), else at its row's lowest
    query-led score (0 after ``personal_rerank``'s min-max): the query still scores it, and
    its position (after every query-led one) breaks ties.

    Args:
        ids: int64 [q, N] query-led candidates, best first; -1 pads.
        scores: float [q, N] their query-led scores.
        member_ids: int64 [q, M] the member-aware embedding's list (it carries the query
            too), best first; -1 pads.
    """
    if ids.ndim != 2 or ids.shape != scores.shape:
        raise ValueError(f"ids {ids.shape} and scores {scores.shape} must be [q, N]")
    if member_ids.ndim != 2 or len(member_ids) != len(ids):
        raise ValueError(f"member_ids {member_ids.shape} must be [{len(ids)}, M]")
    extra_ids = member_ids.astype(np.int64, copy=True)
    for q in range(len(ids)):  # a job both lists hold stays at its query-led place
        row = extra_ids[q]
        repeat = np.ones(len(row), dtype=bool)
        repeat[np.unique(row, return_index=True)[1]] = False
        row[repeat | np.isin(row, ids[q])] = -1
    both = np.concatenate([ids, extra_ids], axis=1)
    valid = ids >= 0
    floor = np.where(valid, scores, np.inf).min(axis=1, keepdims=True)
    floor = np.where(np.isfinite(floor), floor, 0.0)
    own = floor
    if member_scores is not None:
        if member_scores.shape != member_ids.shape:
            raise ValueError(f"member_scores {member_scores.shape} must be {member_ids.shape}")
        own = np.where(np.isnan(member_scores), floor, member_scores)
    extra = np.where(both[:, ids.shape[1] :] >= 0, own, -np.inf)
    return both, np.concatenate([np.where(valid, scores, -np.inf), extra], axis=1)


def commute_decay(
    lat: np.ndarray,
    lon: np.ndarray,
    radius_km: np.ndarray,
    open_to_remote: np.ndarray,
    job_lat: np.ndarray,
    job_lon: np.ndarray,
    job_remote: np.ndarray,
) -> np.ndarray:
    """float32 [q, N] in [0, 1]: 1 for a job within the member's commute radius, or remote
    when the member accepts remote; 0.5 ** ((distance - radius) / radius) beyond; 0 where the
    member's or the job's place is unknown (NaN). Member arrays [q] (radius NaN or <= 0:
    ``DEFAULT_COMMUTE_KM``), job arrays [q, N]."""
    col = [np.asarray(x, dtype=np.float64)[:, None] for x in (lat, lon, radius_km)]
    r = np.where(np.isfinite(col[2]) & (col[2] > 0), col[2], DEFAULT_COMMUTE_KM)
    with np.errstate(invalid="ignore"):
        km = haversine_km(col[0], col[1], job_lat, job_lon)
        decay = np.where(np.isfinite(km), 0.5 ** (np.maximum(km - r, 0.0) / r), 0.0)
    accepted = job_remote & np.asarray(open_to_remote, dtype=bool)[:, None]
    return np.where(accepted, 1.0, decay).astype(np.float32)


def personal_rerank(
    ids: np.ndarray,
    scores: np.ndarray,
    personal: np.ndarray,
    k: int,
    weight: float = PERSONAL_WEIGHT,
) -> tuple[np.ndarray, np.ndarray]:
    """Query-led candidates reordered by the member -> scores float32 [q, k] (-inf pads), ids
    int64 [q, k] (-1 pads).

    fused(d) = (1 - weight) * minmax(scores)(d) + weight * minmax(personal)(d), each min-max
    within the row's candidates. Only the candidates can be returned: the member reorders what
    the query found (``with_member_led`` may add the member-aware embedding's own list, scored
    by the query), never replaces it. Ties: the better position, then the lower id.

    Args:
        ids: int64 [q, N] query-led candidates, best first; -1 pads (ignored).
        scores: float [q, N] their query-led scores (any scale: cosine, BM25, fused).
        personal: float [q, N] each candidate's cosine to the member-aware request embedding.
        k: results per query (>= 1).
        weight: the member's share in [0, 1] (0: the query-led order; 1: the member's order
            of the query's candidates).
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if ids.ndim != 2 or ids.shape != scores.shape or ids.shape != personal.shape:
        raise ValueError(
            f"ids {ids.shape}, scores {scores.shape} and personal {personal.shape} must be [q, N]"
        )
    valid = ids >= 0
    fused = (1 - weight) * _row_minmax(scores, valid) + weight * _row_minmax(personal, valid)
    fused = np.where(valid, fused, -np.inf)
    n = ids.shape[1]
    # lexsort: last key primary -> fused descending, then position, then id.
    pos = np.broadcast_to(np.arange(n), ids.shape)
    order = np.lexsort((ids, pos, -fused), axis=1)[:, :k]
    out_ids = np.take_along_axis(np.where(valid, ids, -1), order, 1)
    out_scores = np.take_along_axis(fused, order, 1).astype(np.float32)
    if out_ids.shape[1] < k:
        pad = k - out_ids.shape[1]
        out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=-1)
        out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return out_scores, out_ids.astype(np.int64)
