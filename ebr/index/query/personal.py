"""Signed-in search over a live view: the query leads, the member reorders.

A retrieval (``ebr``, ``term`` or ``hybrid``) run on the query alone finds the candidates,
``PERSONAL_DEPTH`` deep; for ebr and hybrid the member-aware request embedding's (query +
member + context) own top ``MEMBER_DEPTH`` join them at the query-led list's floor
(``fusion.with_member_led``: jobs near the member the query-only list ranked too deep). Each
candidate's cosine to the member-aware embedding then mixes with its query-led score
(``fusion.personal_rerank``) and the top k are returned. So the member's profile cannot
replace what was typed (a member-led job starts where the query's weakest match stands), while
among the jobs that match, the member's fit (place, seniority, skills) decides more of the
order. The evaluation (``ebr.eval.signed_in``) scores the same functions on the same
candidates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ebr.index.query.fusion import PERSONAL_WEIGHT, personal_rerank, with_member_led
from ebr.index.query.search import Delta, Hits
from ebr.index.query.slot import Slot
from ebr.index.query.vectors import check_queries


def candidate_vectors(snap: Slot, delta: Delta, job_ids: np.ndarray) -> np.ndarray:
    """float32 [*job_ids.shape, d]: each live job's vector (its upserted record's when the
    delta holds one, else its snapshot row's); zeros for -1 padding."""
    flat = job_ids.ravel()
    out = np.zeros((len(flat), snap.dim), dtype=np.float32)
    found = np.zeros(len(flat), dtype=bool)
    alive = np.flatnonzero(delta.open_alive())
    if len(alive):
        # The last live position of an id holds its current record.
        ids = delta.ids[alive][::-1]
        last = ~pd.Index(ids).duplicated()
        pos, at = alive[::-1][last], pd.Index(ids[last]).get_indexer(flat)
        hit = (at >= 0) & (flat >= 0)
        out[hit] = delta.vecs[pos[at[hit]]]
        found |= hit
    rest = np.flatnonzero(~found & (flat >= 0))
    if len(rest):
        rows = snap.row_positions(flat[rest])
        ok = rows >= 0  # a returned job is live: in the delta or the snapshot
        out[rest[ok]] = snap.vectors[rows[ok]]
    return out.reshape(*job_ids.shape, snap.dim)


def check_personal(personal: np.ndarray, n: int, snap: Slot, k: int) -> np.ndarray:
    """``personal`` as float32 [n, dim] finite unit vectors, else a ValueError naming it."""
    if personal.ndim != 2 or personal.shape != (n, snap.dim):
        raise ValueError(f"personal must be [{n}, {snap.dim}] vectors, got {personal.shape}")
    try:
        return check_queries(personal, max(k, 1), snap.dim, snap.name)
    except ValueError as err:
        raise ValueError(f"personal vectors: {err}") from None


def personalise(
    hits: Hits,
    snap: Slot,
    delta: Delta,
    personal: np.ndarray,
    k: int,
    weight: float = PERSONAL_WEIGHT,
    member: Hits | None = None,
) -> Hits:
    """``hits`` (the query-led candidates, best first) reordered by the member: top k of
    ``personal_rerank`` with each candidate's cosine to ``personal`` (float32 [q, d] unit
    member-aware request embeddings, one per query), with ``member`` (the member-aware
    embedding's own hits, same filter) added at the query-led floor. The plan gains
    ``personal_weight``, ``candidates`` (query-led candidates per query) and ``member_led``
    (member-led candidates the query-led list lacked)."""
    personal = check_personal(personal, len(hits.job_ids), snap, k)
    ids, scores = hits.job_ids, hits.scores
    if member is not None:
        ids, scores = with_member_led(ids, scores, member.job_ids)
    vecs = candidate_vectors(snap, delta, ids)  # [q, N, d]
    cos = np.einsum("qnd,qd->qn", vecs, personal.astype(np.float32, copy=False))
    scores, job_ids = personal_rerank(ids, scores, cos, k, weight)
    kept = hits.delta_items
    if member is not None and len(member.delta_items):
        kept = pd.concat([kept, member.delta_items]) if len(kept) else member.delta_items
    if len(kept):
        kept = kept[kept["job_id"].isin(job_ids[job_ids >= 0])]
        kept = kept.drop_duplicates("job_id").reset_index(drop=True)

    def most(x: np.ndarray) -> int:
        return int((x >= 0).sum(axis=1).max()) if x.size else 0

    n = most(hits.job_ids)
    extra = most(ids[:, hits.job_ids.shape[1] :])
    plan = {**hits.plan, "personal_weight": weight, "candidates": n, "member_led": extra}
    return Hits(scores, job_ids, kept, plan)
