"""The served search path, offline: what ``/v1/search`` returns for a batch of requests, anonymous
and signed in, with exact search over the catalogue (so the evaluation measures the model and
the fusion, not the ANN index). ``ebr.eval.signed_in`` scores it.

Anonymous (unchanged): ``ebr`` = the request tower without a member, ``term`` = BM25, ``hybrid`` =
their score fusion (``hybrid_scored``: EBR weight ``HYBRID_EBR_WEIGHT``, BM25 weighted by its term
coverage and divided by its attainable score), each list ``K`` deep as the slot fuses ``max(k,
HYBRID_DEPTH)``-deep lists. Signed in: the query leads, the member reorders. Each mode's query-led
list, built as for an anonymous request but ``PERSONAL_DEPTH`` deep (for hybrid: both lists that
deep, fused to that depth), plus for ebr and hybrid the member-aware embedding's own
``MEMBER_DEPTH`` with their query-led scores (``signed_in_candidates``), is reordered by
``personal_rerank``
with each candidate's cosine to the member-aware request embedding (query AND member profile +
interest, as ``ebr.model.train.request_members`` builds them) plus ``GEO_WEIGHT`` times its
commute decay for the member (``Catalogue.decay``). A query no word of which the towers
know gets no EBR list (serving sends no vector: hybrid falls back to term), and its member-aware
embedding is the member's alone, as serving embeds it.

Size: the offline twin of the served path (spelling, encode, retrieve, signed-in rerank) for
anonymous and signed-in batches; kept apart from the scoring (``ebr.eval.signed_in``).
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ebr.config import ModelConfig
from ebr.data.marketplace import SENIORITY
from ebr.eval.bm25 import BM25Baseline
from ebr.eval.ranking import hybrid_scored, pad_scores, pad_to
from ebr.index.query.fusion import (
    GEO_WEIGHT,
    HYBRID_EBR_WEIGHT,
    HYBRID_EBR_WEIGHT_MEMBER,
    MEMBER_DEPTH,
    PERSONAL_DEPTH,
    personal_rerank,
    with_member_led,
)
from ebr.index.query.personal import Places
from ebr.index.query.search import HYBRID_DEPTH
from ebr.index.query.slot import item_places
from ebr.index.query.terms import term_text, tokens
from ebr.metrics import exact_topk
from ebr.model.infer import encode_requests
from ebr.model.towers import TwoTower
from ebr.model.train import request_members
from ebr.text import Vocabulary

MODES = ("ebr", "term", "hybrid")
PLACE_COLUMNS = ("lat", "lon", "max_commute_km", "open_to_remote")  # what Places reads
K = 100  # results per request (recall@100)
TOP = 10  # the page personal fit is measured on


@dataclass(frozen=True)
class Catalogue:
    """The searchable jobs: ids int64 [n], item vectors float32 [n, dim] (ids' order), the term
    index, and the attributes personal fit reads (lat, lon, remote, seniority index)."""

    ids: np.ndarray
    vecs: np.ndarray
    bm25: BM25Baseline
    attrs: pd.DataFrame

    @classmethod
    def of(cls, jobs: pd.DataFrame, vecs: np.ndarray, bm25: BM25Baseline) -> Catalogue:
        if len(vecs) != len(jobs):
            raise ValueError(f"{len(vecs)} item vectors for {len(jobs)} jobs")
        lat, lon, remote = item_places(jobs)  # as a slot reads them (``Slot.places``)
        seniority = seniority_levels(jobs["seniority"])
        attrs = pd.DataFrame({"lat": lat, "lon": lon, "remote": remote, "seniority": seniority})
        return cls(jobs["job_id"].to_numpy(np.int64), vecs, bm25, attrs)

    def decay(self, job_ids: np.ndarray, members: pd.DataFrame) -> np.ndarray:
        """float32 [r, N]: ``commute_decay`` of ``job_ids`` int64 [r, N] (-1 pads: 0) for row
        r of ``members`` (lat, lon, max_commute_km, open_to_remote), as serving computes it
        from the profile (``ebr.index.query.personal.Places``)."""
        rows = self.rows(job_ids)
        a = self.attrs.iloc[np.maximum(rows, 0).ravel()]
        lat, lon = (np.where(rows >= 0, a[c].to_numpy().reshape(rows.shape), np.nan)
                    for c in ("lat", "lon"))  # fmt: skip
        remote = (rows >= 0) & a["remote"].to_numpy().reshape(rows.shape)
        places = Places.of(members[list(PLACE_COLUMNS)].to_dict("records"))
        return places.decay(lat, lon, remote)

    def rows(self, job_ids: np.ndarray) -> np.ndarray:
        """Catalogue rows of ``job_ids`` (any shape; -1 stays -1)."""
        index = pd.Index(self.ids)
        out = index.get_indexer(job_ids.ravel()).reshape(job_ids.shape)
        return np.where(job_ids >= 0, out, -1)


def seniority_levels(col: pd.Series) -> np.ndarray:
    """int64 [n]: each value's index in ``SENIORITY`` (entry 0 .. director 4)."""
    levels = {s: i for i, s in enumerate(SENIORITY)}
    bad = sorted(set(col) - set(levels))
    if bad:
        raise ValueError(f"seniority must be one of {SENIORITY}, got {bad[:5]}")
    return col.map(levels).to_numpy(np.int64)


@dataclass(frozen=True)
class Served:
    """One batch of q queries, served anonymously and for each of m members (request r =
    query ``rep[r]``; r = query * m + member)."""

    searched: list[str]  # [q] the text searched (after spelling correction)
    understood: np.ndarray  # bool [q]: the towers know a word of it
    anonymous: dict[str, np.ndarray]  # mode -> ids int64 [q, K]
    led: dict[str, tuple[np.ndarray, np.ndarray]]  # mode -> query-led (ids, scores) [q, depth]
    # mode -> per request (ids, scores) [q * m, N]: the query-led list, then (ebr, hybrid) the
    # member-aware embedding's MEMBER_DEPTH it lacked at its floor (fusion.with_member_led)
    candidates: dict[str, tuple[np.ndarray, np.ndarray]]
    personal: dict[str, np.ndarray]  # mode -> float [q * m, N] candidates' cosines to the member
    geo: dict[str, np.ndarray]  # mode -> float [q * m, N] candidates' commute_decay
    member_led: dict[str, np.ndarray]  # mode -> ids [q * m, K]: where not understood (else -1)
    rep: np.ndarray  # int64 [q * m]

    def signed_in(
        self, mode: str, weight: float, k: int = K, geo_weight: float = GEO_WEIGHT
    ) -> np.ndarray:
        """ids int64 [q * m, k] of the signed-in requests at the member's share ``weight``
        (cosine + ``geo_weight`` * commute decay): the candidates reordered, or the
        member-led list for a query not understood."""
        ids, scores = self.candidates[mode]
        member = self.personal[mode] + geo_weight * self.geo[mode]
        out = personal_rerank(ids, scores, member, k, weight)[1]
        return np.where(self.understood[self.rep][:, None], out, self.member_led[mode][:, :k])


def _ebr_list(cat: Catalogue, vecs: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    cos, found = exact_topk(cat.vecs, vecs, depth, cat.ids)
    ids = pad_to(found, depth)
    return ids, np.where(ids >= 0, pad_scores(cos.astype(np.float64), depth), -np.inf)


def query_led(
    cat: Catalogue, anon: np.ndarray, texts: Sequence[str], understood: np.ndarray, depth: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each mode's list for queries embedded without a member ``anon`` float32 [q, dim]:
    mode -> (ids int64 [q, depth] -1 pads, scores float [q, depth] -inf pads). A query not
    understood has no EBR list and its hybrid list is the term list (serving sends no vector
    and answers with term retrieval)."""
    ebr_ids, ebr_s = _ebr_list(cat, anon, depth)
    ebr = np.where(understood[:, None], ebr_ids, -1), np.where(understood[:, None], ebr_s, -np.inf)
    bm_ids, bm_s = cat.bm25.search_scored(list(texts), depth)
    term = pad_to(bm_ids, depth), pad_scores(bm_s.astype(np.float64), depth)
    hyb = fused(cat, ebr, term, texts, max(depth, HYBRID_DEPTH), depth)
    hybrid = tuple(np.where(understood[:, None], h, t) for h, t in zip(hyb, term, strict=True))
    return {"ebr": ebr, "term": term, "hybrid": (hybrid[0], hybrid[1])}


def fused(
    cat: Catalogue,
    ebr: tuple[np.ndarray, np.ndarray],
    term: tuple[np.ndarray, np.ndarray],
    texts: Sequence[str],
    deep: int,
    k: int,
    weight: float = HYBRID_EBR_WEIGHT,
) -> tuple[np.ndarray, np.ndarray]:
    """The slot's hybrid: the first ``deep`` of each (ids, scores) list fused to ``k``, EBR
    weight ``weight`` -> (ids int64 [q, k], scores float [q, k])."""
    (e_ids, e_s), (t_ids, t_s) = ((x[:, :deep] for x in pair) for pair in (ebr, term))
    cover, scale = cat.bm25.coverage(texts), cat.bm25.attainable(texts)
    ids, scores = hybrid_scored(
        e_ids, e_s, t_ids, t_s, k, weight, bm25_coverage=cover, bm25_scale=scale
    )
    return pad_to(ids, k), pad_scores(scores.astype(np.float64), k)


def personal_cosines(cat: Catalogue, ids: np.ndarray, member_q: np.ndarray) -> np.ndarray:
    """float32 [n, N]: each candidate of ``ids`` int64 [n, N] (-1 pads: 0) against its row of
    the member-aware request embeddings ``member_q`` float32 [n, dim]; in chunks (n*N*dim)."""
    rows = cat.rows(ids)
    out = np.zeros(ids.shape, dtype=np.float32)
    for s in range(0, len(ids), 256):
        v = cat.vecs[np.maximum(rows[s : s + 256], 0)]  # [c, N, dim]
        out[s : s + 256] = np.einsum("cnd,cd->cn", v, member_q[s : s + 256])
    return np.where(rows >= 0, out, 0.0).astype(np.float32)


def serve(
    model: TwoTower,
    mcfg: ModelConfig,
    cat: Catalogue,
    texts: Sequence[str],
    vocabulary: Vocabulary,
    panel: pd.DataFrame,
    members: pd.DataFrame,
    interest: Mapping[pd.Timestamp, np.ndarray] | None,
    when: pd.Timestamp | None,
    depth: int = PERSONAL_DEPTH,
) -> Served:
    """``texts`` (already corrected) sent anonymously and by every member of ``panel`` (rows of
    ``members``); ``when`` is the request time (context features, the interest snapshot)."""
    if depth < K:
        raise ValueError(f"depth must be >= {K}, got {depth}")
    if interest is not None and when is None:
        raise ValueError("when (the request time) is needed to read member interest")
    texts = list(texts)
    q, m = len(texts), len(panel)
    understood = np.array([bool(vocabulary.split(t)[0]) for t in texts], dtype=bool)
    embed = [t if u else None for t, u in zip(texts, understood, strict=True)]
    anon = encode_requests(
        model.request, embed, [None] * q, mcfg, whens=None if when is None else [when] * q
    )
    led = query_led(cat, anon, texts, understood, depth)
    hybrid = fused(cat, led["ebr"], led["term"], texts, HYBRID_DEPTH, K)[0]
    anonymous = {
        "ebr": led["ebr"][0][:, :K],
        "term": led["term"][0][:, :K],
        "hybrid": np.where(understood[:, None], hybrid, led["term"][0][:, :K]),
    }
    rep = np.repeat(np.arange(q), m)
    sessions = pd.DataFrame(
        {"member_id": np.tile(panel["member_id"].to_numpy(np.int64), q), "ts": [when] * (q * m)}
    )
    recs = request_members(sessions, members, interest)
    whens = None if when is None else [when] * (q * m)
    member_q = encode_requests(model.request, [embed[i] for i in rep], recs, mcfg, whens=whens)
    candidates = signed_in_candidates(cat, led, rep, member_q, anon, texts)
    personal = {mode: personal_cosines(cat, candidates[mode][0], member_q) for mode in MODES}
    judges = panel.iloc[np.tile(np.arange(m), q)].reset_index(drop=True)
    geo = {mode: cat.decay(candidates[mode][0], judges) for mode in MODES}
    member_led = _member_led(cat, member_q, rep, ~understood[rep], led["term"], texts)
    return Served(texts, understood, anonymous, led, candidates, personal, geo, member_led, rep)


def signed_in_candidates(
    cat: Catalogue,
    led: Mapping[str, tuple[np.ndarray, np.ndarray]],
    rep: np.ndarray,
    member_q: np.ndarray,
    anon: np.ndarray,
    texts: Sequence[str],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """What a signed-in request reorders, as the slot gathers it: request r's query-led list
    (``led`` mode -> [q, depth], row rep[r]); ebr and hybrid add the top MEMBER_DEPTH of the
    member-aware embedding ``member_q`` float32 [r, dim] they lack, scored as the slot scores
    them (``ebr.index.query.personal.member_led_scores``): ebr their cosine to the query's
    embedding ``anon`` [q, dim]; hybrid the BM25 part of score fusion for ``texts`` [q]."""
    member_ids = _ebr_list(cat, member_q, MEMBER_DEPTH)[0]
    query_cos = personal_cosines(cat, member_ids, anon[rep])
    cover, scale = cat.bm25.coverage(texts), cat.bm25.attainable(texts)
    bm = np.zeros(member_ids.shape)
    for i in np.unique(rep):
        at = rep == i
        bm[at] = cat.bm25.scores_of(texts[i], member_ids[at])
    term = (1 - HYBRID_EBR_WEIGHT) * (cover / scale)[rep][:, None] * bm
    own = {"ebr": query_cos, "hybrid": term}
    out = {}
    for mode in MODES:
        ids, scores = led[mode][0][rep], led[mode][1][rep]
        if mode == "term":  # keyword matches only
            out[mode] = (ids, scores)
            continue
        mine = np.where(member_ids >= 0, own[mode], np.nan)
        out[mode] = with_member_led(ids, scores, member_ids, mine)
    return out


def _member_led(
    cat: Catalogue,
    member_q: np.ndarray,
    rep: np.ndarray,
    miss: np.ndarray,
    term: tuple[np.ndarray, np.ndarray],
    texts: Sequence[str],
) -> dict[str, np.ndarray]:
    """Signed-in requests whose query is not understood (``miss`` bool [r]): serving embeds the
    member alone and searches without reordering: ebr = that embedding's list, term = BM25,
    hybrid = both fused with ``HYBRID_EBR_WEIGHT_MEMBER``. mode -> ids [r, K] (-1 elsewhere)."""
    out = {mode: np.full((len(rep), K), -1, dtype=np.int64) for mode in MODES}
    if not miss.any():
        return out
    rows = rep[miss]
    ebr = _ebr_list(cat, member_q[miss], HYBRID_DEPTH)
    bm = term[0][rows][:, :HYBRID_DEPTH], term[1][rows][:, :HYBRID_DEPTH]
    out["ebr"][miss] = ebr[0][:, :K]
    out["term"][miss] = bm[0][:, :K]
    sub = [texts[i] for i in rows]
    out["hybrid"][miss] = fused(cat, ebr, bm, sub, HYBRID_DEPTH, K, HYBRID_EBR_WEIGHT_MEMBER)[0]
    return out


class _Known:
    """``word in known`` as serving's ``KnownWords`` answers it: the towers' vocabulary or the
    term index holds the word, or term retrieval ignores it (a stopword, one letter)."""

    def __init__(self, words: frozenset[str]) -> None:
        self.words = words

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and (word in self.words or not tokens(word))


@dataclass(frozen=True)
class Spelling:
    """Serving's query correction (``serving.query_spelling``): a ``ebr.spelling.Speller`` over
    the term index's words with their document counts (``term_text``: each job's title,
    skills and description), never correcting a word the towers or the term index know."""

    speller: Any
    known: _Known

    @classmethod
    def of(cls, jobs: pd.DataFrame, vocabulary: Vocabulary) -> Spelling | None:
        """None while ``ebr.spelling`` does not exist (the section says so)."""
        try:
            spelling = importlib.import_module("ebr.spelling")
        except ModuleNotFoundError as err:
            if err.name != "ebr.spelling":
                raise
            return None
        counts: Counter[str] = Counter()
        for text in term_text(jobs):
            counts.update(set(tokens(text)))
        known = _Known(vocabulary.words | frozenset(counts))
        return cls(spelling.Speller.of_counts(counts), known)

    def correct(self, texts: Sequence[str]) -> list[Any]:
        """One ``Correction`` (query: what is searched, corrected, changes, unresolved) each."""
        return [self.speller.correct(t, self.known) for t in texts]
