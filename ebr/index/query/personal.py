"""Signed-in search over a live view: the query leads, the member reorders.

A retrieval (``ebr``, ``term`` or ``hybrid``) run on the query alone finds the candidates,
``PERSONAL_DEPTH`` deep; for ebr and hybrid the member-aware request embedding's (query +
member + context) own top ``MEMBER_DEPTH`` join them, scored by the query as the list scores
its own (``member_led_scores``: matching jobs near the member that a head query's list was too
short to hold). The member's side of each candidate (its cosine to the member-aware embedding
plus ``GEO_WEIGHT`` * its commute decay from the member's home) then mixes with its query-led
score (``fusion.personal_rerank``) and the top k are returned. So the member's profile cannot
replace what was typed (a member-led job gets on the query's side only what the query gives
it), while among the jobs that match, the member's fit (place, seniority, skills) decides
more of the order. The evaluation (``ebr.eval.signed_in``) scores the same functions on the
same candidates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ebr.index.query.fusion import (
    GEO_WEIGHT,
    PERSONAL_WEIGHT,
    commute_decay,
    personal_rerank,
    with_member_led,
)
from ebr.index.query.search import Delta, Hits, page_items, page_rows
from ebr.index.query.slot import Slot
from ebr.index.query.vectors import check_queries


def _locate(snap: Slot, delta: Delta, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each live job of ``flat`` int64 [n] (-1 pads) is held: (delta position, snapshot
    row), -1 where not; its upserted record (the delta's last live one) wins."""
    pos = np.full(len(flat), -1, dtype=np.int64)
    alive = np.flatnonzero(delta.open_alive())
    if len(alive):
        # The last live position of an id holds its current record.
        ids = delta.ids[alive][::-1]
        last = ~pd.Index(ids).duplicated()
        live, at = alive[::-1][last], pd.Index(ids[last]).get_indexer(flat)
        hit = (at >= 0) & (flat >= 0)
        pos[hit] = live[at[hit]]
    rows = np.full(len(flat), -1, dtype=np.int64)
    rest = np.flatnonzero((pos < 0) & (flat >= 0))
    if len(rest):
        rows[rest] = snap.row_positions(flat[rest])  # a returned job is live: one or the other
    return pos, rows


@dataclass(frozen=True)
class Places:
    """Where q signed-in members search from, one entry per query: home lat, lon (NaN:
    unknown), commute radius km (NaN: unknown), open to remote."""

    lat: np.ndarray
    lon: np.ndarray
    radius_km: np.ndarray
    open_to_remote: np.ndarray

    @classmethod
    def of(cls, profiles: Sequence[Mapping[str, Any]]) -> Places:
        """From member profiles (``lat``, ``lon``, ``max_commute_km``, ``open_to_remote``;
        any may be missing or None)."""

        def num(p: Mapping[str, Any], key: str) -> float:
            v = p.get(key)
            return float(v) if v is not None and v == v else np.nan

        return cls(
            np.array([num(p, "lat") for p in profiles]),
            np.array([num(p, "lon") for p in profiles]),
            np.array([num(p, "max_commute_km") for p in profiles]),
            np.array([bool(p.get("open_to_remote") or False) for p in profiles]),
        )

    def decay(self, job_lat: np.ndarray, job_lon: np.ndarray, remote: np.ndarray) -> np.ndarray:
        """``fusion.commute_decay`` of jobs [q, N] for these members."""
        return commute_decay(
            self.lat, self.lon, self.radius_km, self.open_to_remote, job_lat, job_lon, remote
        )


Located = tuple[np.ndarray, np.ndarray]  # ``_locate``'s (delta position, snapshot row)


def candidate_vectors(
    snap: Slot, delta: Delta, job_ids: np.ndarray, located: Located | None = None
) -> np.ndarray:
    """float32 [*job_ids.shape, d]: each live job's vector (its upserted record's when the
    delta holds one, else its snapshot row's); zeros for -1 padding. ``located``: where
    ``_locate`` found ``job_ids`` (found again when None)."""
    pos, rows = located or _locate(snap, delta, job_ids.ravel())
    out = np.zeros((len(pos), snap.dim), dtype=np.float32)
    out[pos >= 0] = delta.vecs[pos[pos >= 0]]
    out[rows >= 0] = snap.vectors[rows[rows >= 0]]
    return out.reshape(*job_ids.shape, snap.dim)


def candidate_places(
    snap: Slot, delta: Delta, job_ids: np.ndarray, located: Located | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lat, lon) float64 and remote bool, each [*job_ids.shape], of each live job (as
    ``candidate_vectors`` finds it); NaN / False for -1 padding and unknown values."""
    pos, rows = located or _locate(snap, delta, job_ids.ravel())
    lat, lon = np.full(len(pos), np.nan), np.full(len(pos), np.nan)
    remote = np.zeros(len(pos), dtype=bool)
    for where, at, (la, lo, re) in (
        (rows >= 0, rows, snap.places),
        (pos >= 0, pos, delta.places(snap.items)),
    ):
        if where.any():
            lat[where], lon[where], remote[where] = la[at[where]], lo[at[where]], re[at[where]]
    shape = job_ids.shape
    return lat.reshape(shape), lon.reshape(shape), remote.reshape(shape)


def member_led_scores(
    snap: Slot,
    delta: Delta,
    member_ids: np.ndarray,
    retrieval: str,
    queries: np.ndarray,
    texts: Sequence[str] | None,
    led: Hits,
) -> np.ndarray:
    """float [q, M]: the query-led score each member-led job (``member_ids`` int64 [q, M], -1
    pads: NaN) would get from the query-led list ``led``: ebr its cosine to the query
    embedding ``queries`` [q, d]; hybrid what score fusion gives a job its EBR list lacks, the
    BM25 part alone (``fuse``: (1 - ebr_weight) * coverage * BM25 / attainable, from ``led``'s
    plan), scored on the snapshot's statistics."""
    q, m = member_ids.shape
    located = _locate(snap, delta, member_ids.ravel())
    if retrieval == "ebr":
        vecs = candidate_vectors(snap, delta, member_ids, located)
        out = np.einsum("qmd,qd->qm", vecs, queries.astype(np.float32, copy=False))
        return np.where(member_ids >= 0, out, np.nan)
    if retrieval != "hybrid" or texts is None or snap.terms is None:
        raise ValueError(f"member-led scores need ebr or hybrid with texts, got {retrieval!r}")
    pos, rows = (x.reshape(q, m) for x in located)
    term, w = led.plan["term"], float(led.plan["ebr_weight"])
    docs = delta.terms(snap.items) if (pos >= 0).any() else None
    out = np.full((q, m), np.nan)
    for i, text in enumerate(texts):
        bm = np.zeros(m)
        if (rows[i] >= 0).any():
            bm[rows[i] >= 0] = snap.terms.scores(text)[rows[i][rows[i] >= 0]]
        if docs is not None and (pos[i] >= 0).any():
            bm[pos[i] >= 0] = snap.terms.score_docs(text, docs)[pos[i][pos[i] >= 0]]
        part = (1 - w) * float(term["coverage"][i]) * bm / float(term["attainable"][i])
        out[i] = np.where(member_ids[i] >= 0, part, np.nan)
    return out


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
    member_scores: np.ndarray | None = None,
    places: Places | None = None,
    geo_weight: float = GEO_WEIGHT,
) -> Hits:
    """``hits`` (the query-led candidates, best first) reordered by the member: top k of
    ``personal_rerank`` with each candidate's cosine to ``personal`` (float32 [q, d] unit
    member-aware request embeddings, one per query), with ``member`` (the member-aware
    embedding's own hits, same filter) added with ``member_scores`` (``member_led_scores``;
    None: at the query-led floor). The plan gains ``personal_weight``, ``candidates``
    (query-led candidates per query) and ``member_led`` (member-led candidates the query-led
    list lacked). With ``places`` (the members' homes)
    the member's side is cosine + ``geo_weight`` * ``commute_decay``; the plan gains
    ``geo_weight``."""
    personal = check_personal(personal, len(hits.job_ids), snap, k)
    ids, scores = hits.job_ids, hits.scores
    if member is not None:
        ids, scores = with_member_led(ids, scores, member.job_ids, member_scores)
    located = _locate(snap, delta, ids.ravel())
    vecs = candidate_vectors(snap, delta, ids, located)  # [q, N, d]
    cos = np.einsum("qnd,qd->qn", vecs, personal.astype(np.float32, copy=False))
    if places is not None:
        if len(places.lat) != len(ids):
            raise ValueError(f"places must hold {len(ids)} members, got {len(places.lat)}")
        cos = cos + geo_weight * places.decay(*candidate_places(snap, delta, ids, located))
    scores, job_ids = personal_rerank(ids, scores, cos, k, weight)
    kept = page_items(job_ids, hits, *([member] if member is not None else []))

    def most(x: np.ndarray) -> int:
        return int((x >= 0).sum(axis=1).max()) if x.size else 0

    n = most(hits.job_ids)
    extra = most(ids[:, hits.job_ids.shape[1] :])
    plan = {**hits.plan, "personal_weight": weight, "candidates": n, "member_led": extra}
    if places is not None:
        plan["geo_weight"] = geo_weight
    rows = page_rows(job_ids, hits.delta_rows, member.delta_rows if member is not None else {})
    return Hits(scores, job_ids, kept, plan, rows)
