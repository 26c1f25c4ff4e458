"""The filtered half of the recall gate: filters made from the vectors, the planner's recall.

``ebr.index.build.tune`` runs ``filtered_recalls`` at the setting it chose; a slot whose planner
misses the target under any of these filters is refused like one that misses it unfiltered.
Attributes are not needed: the filters follow the vectors the way a region or an industry
follows job embeddings, which is what makes filtered ANN lose rows.
"""

from __future__ import annotations

from dataclasses import replace

import faiss
import numpy as np

from ebr.index.query.planner import PlannerParams, filtered_search
from ebr.metrics import drop_own, exact_topk, recall_of

FILTER_SHARE = 0.4  # eligible share of each gate filter (moderate: the planner's ANN range)
FILTER_GROUPS = 16  # groups of the "clusters" filter: rows by nearest of 16 random rows


def gate_filters(
    vectors: np.ndarray, queries: np.ndarray, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The gate's filters, made from the vectors [n, d] alone (no attributes needed):
    name -> (eligible rows bool [n], the queries [q'] it is measured on, int indices).

    - ``random``: FILTER_SHARE of the rows at random, all queries (independent of the vectors);
    - ``half_space``: the rows projecting highest on a random direction (FILTER_SHARE of them),
      queries projecting below the rows' median: a far region, as a region filter is for a
      member elsewhere;
    - ``clusters``: rows grouped by their nearest of FILTER_GROUPS random rows, whole groups
      (about FILTER_SHARE of the rows) eligible, queries from the other groups: a category that
      follows the vectors, as an industry does.

    A correlated filter whose "other side" holds no query (tiny catalogues) is measured on all
    queries instead.
    """
    rng = np.random.default_rng(seed)
    n = len(vectors)
    direction = np.asarray(rng.standard_normal(vectors.shape[1]), dtype=np.float32)
    rows_along, queries_along = vectors @ direction, queries @ direction
    anchors = vectors[rng.choice(n, min(FILTER_GROUPS, n), replace=False)]
    group, query_group = (np.argmax(v @ anchors.T, axis=1) for v in (vectors, queries))
    sizes = np.bincount(group, minlength=len(anchors))
    picked = rng.permutation(len(anchors))
    # Whole groups in random order until they hold FILTER_SHARE of the rows (at least one).
    taken = picked[: max(1, int(np.searchsorted(np.cumsum(sizes[picked]), FILTER_SHARE * n)))]
    out = {
        "random": (rng.random(n) < FILTER_SHARE, np.arange(len(queries))),
        "half_space": (
            rows_along >= np.quantile(rows_along, 1 - FILTER_SHARE),
            np.flatnonzero(queries_along < np.median(rows_along)),
        ),
        "clusters": (np.isin(group, taken), np.flatnonzero(~np.isin(query_group, taken))),
    }
    return {
        name: (mask, qs if len(qs) else np.arange(len(queries))) for name, (mask, qs) in out.items()
    }


def filtered_recalls(
    index: faiss.Index,
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    seed: int,
    planner: PlannerParams | None = None,
    own: np.ndarray | None = None,
) -> dict[str, float]:
    """Recall@k of the planner's ANN path against exact filtered search, per ``gate_filters``
    filter, at ``index``'s current search setting.

    The ANN path is forced (``exact_max_*`` = 0): at the gate's 40% the default planner would
    scan small catalogues exactly and pass whatever the index does. Recall counts min(k,
    eligible) rows per query. ``own``: the catalogue rows the queries are (held-out rows),
    each left out of its own results (``ebr.metrics.drop_own``).
    """
    forced = replace(planner or PlannerParams(), exact_max_eligible=0, exact_max_fraction=0.0)
    out: dict[str, float] = {}
    for name, (mask, qs) in gate_filters(vectors, queries, seed).items():
        rows = np.flatnonzero(mask)
        need = min(k, len(rows) - (own is not None))
        if need <= 0:  # a catalogue of a row or two: nothing to filter
            continue
        q = queries[qs]
        deeper = need + (own is not None)  # leave-one-out: one deeper, the query's row dropped
        _, sub = exact_topk(vectors[rows], q, deeper)
        _, found, _ = filtered_search(index, vectors, q, deeper, mask, forced)
        truth = rows[sub]
        if own is not None:
            truth, found = drop_own(truth, own[qs]), drop_own(np.asarray(found), own[qs])
        out[name] = recall_of(found, truth)
    return out
