"""One request's retrieval over a live view: the three retrievals and the signed-in rerank.

``retrieve`` dispatches on ``retrieval`` (``ebr.index.query.search``): ``ebr`` (the request
embedding, ``search_view``), ``term`` (BM25, ``term_view``) or ``hybrid`` (both, fused). A
signed-in search (``personal``) retrieves ``PERSONAL_DEPTH`` candidates from the query alone,
adds the member-aware embedding's own ``MEMBER_DEPTH`` (ebr and hybrid) and lets the member
reorder them (``ebr.index.query.personal``). ``LiveSlot.query`` calls it with its current view.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from ebr.index.query.attributes import AttributeTable
from ebr.index.query.filters import Filter
from ebr.index.query.fusion import (
    GEO_WEIGHT,
    HYBRID_EBR_WEIGHT,
    MEMBER_DEPTH,
    PERSONAL_DEPTH,
    PERSONAL_WEIGHT,
)
from ebr.index.query.personal import Places, check_personal, member_led_scores, personalise
from ebr.index.query.planner import PlannerParams
from ebr.index.query.search import (
    HYBRID_DEPTH,
    RETRIEVALS,
    Delta,
    Hits,
    Scope,
    check_texts,
    fuse,
    scope,
    search_view,
    term_view,
)
from ebr.index.query.slot import Slot


class LiveView(NamedTuple):
    """What one retrieval reads: the snapshot, its tombstones, the delta, the attributes and
    the view's unfiltered ``Scope`` (made once per view by ``LiveSlot``)."""

    snap: Slot
    dead: np.ndarray  # [n] bool: snapshot rows tombstoned or superseded
    n_deleted: int
    delta: Delta
    attrs: Callable[[], AttributeTable]  # built on first use (a filtered query)
    unfiltered: Scope


def retrieve(
    view: LiveView,
    queries: np.ndarray | None,
    k: int,
    flt: Filter | None = None,
    params: PlannerParams | None = None,
    texts: Sequence[str] | None = None,
    retrieval: str = "ebr",
    ebr_weight: float = HYBRID_EBR_WEIGHT,
    personal: np.ndarray | None = None,
    personal_weight: float = PERSONAL_WEIGHT,
    places: Places | None = None,
    geo_weight: float = GEO_WEIGHT,
) -> Hits:
    """Top-k live jobs passing ``flt`` per query.

    Args:
        queries: float [q, d] finite, L2-normalised query embeddings of the slot's model
            (not needed by ``retrieval="term"``).
        k: results per query (>= 1); k come back whenever k live jobs pass the filter
            (term retrieval: whenever k of them share a query term).
        texts: the q query texts (term and hybrid retrieval).
        retrieval: ``ebr`` (embeddings), ``term`` (BM25) or ``hybrid`` (both, fused).
        ebr_weight: hybrid's weight of the EBR list in [0, 1] (BM25 gets the rest).
        personal: float [q, d] member-aware request embeddings (a signed-in search): the
            retrieval runs on ``queries`` / ``texts`` alone, PERSONAL_DEPTH deep, ebr and
            hybrid add ``personal``'s own MEMBER_DEPTH (same filter), and the member
            reorders the candidates (``ebr.index.query.personal``), weight
            ``personal_weight``.
        places: the signed-in members' homes (``personal.Places``, one per query): the
            member's side adds ``geo_weight`` * ``commute_decay``.
    """
    if retrieval not in RETRIEVALS:
        raise ValueError(f"retrieval must be one of {RETRIEVALS}, got {retrieval!r}")
    snap, dead, delta, attrs = view.snap, view.dead, view.delta, view.attrs
    if retrieval == "term":
        texts = check_texts(texts)
    elif queries is None:
        raise ValueError(f"{retrieval} retrieval needs the query vectors")
    elif retrieval == "hybrid":
        texts = check_texts(texts, len(queries))
    depth = k if personal is None else max(k, PERSONAL_DEPTH)
    if personal is not None:
        n = len(queries) if queries is not None else len(texts or ())
        personal = check_personal(personal, n, snap, k)
    # Once per query: the filter's mask and the live delta rows it keeps (both lists of a
    # hybrid search read the same), and the view's deleted count instead of an [n] count.
    sc = view.unfiltered if flt is None else scope(snap, dead, delta, attrs, flt, view.n_deleted)
    if retrieval == "term":
        assert texts is not None, "checked above"
        hits = term_view(snap, dead, delta, attrs, texts, depth, flt, sc)
    elif retrieval == "ebr":
        assert queries is not None, "checked above"
        hits = search_view(snap, dead, delta, attrs, queries, depth, flt, params, sc)
    else:
        assert queries is not None and texts is not None, "checked above"
        deep = max(depth, HYBRID_DEPTH)
        ebr = search_view(snap, dead, delta, attrs, queries, deep, flt, params, sc)
        term = term_view(snap, dead, delta, attrs, texts, deep, flt, sc)
        hits = fuse(ebr, term, depth, ebr_weight)
    if personal is None:
        return hits
    member = member_scores = None
    if retrieval != "term":  # term stays keyword matches; the others add the member's list
        member = search_view(snap, dead, delta, attrs, personal, MEMBER_DEPTH, flt, params, sc)
        assert queries is not None, "checked above"
        member_scores = member_led_scores(
            snap, delta, member.job_ids, retrieval, queries, texts, hits
        )
    return personalise(hits, snap, delta, personal, k, personal_weight, member,
                       member_scores, places, geo_weight)  # fmt: skip
