"""What the ranker reads of each retrieved candidate, from the live view that retrieved it:
its retrieval scores (the fused score, cosines, BM25, term coverage) and its item columns.

    cands = gather(view, job_ids, scores, query_vec, head_vecs, text)

Training (``ebr.rank.dataset``) and serving (``serving.retriever``) call the same ``gather``
on a slot's view, so a feature means the same in both.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ebr.data.marketplace import SENIORITY
from ebr.index.query.personal import _locate, candidate_vectors
from ebr.index.query.retrieve import LiveView
from ebr.index.query.slot import Slot, item_places
from ebr.index.query.terms import TermIndex, tokens

_LEVEL = {s: float(i) for i, s in enumerate(SENIORITY)}
_DAY_NS = 86_400 * 10**9


ITEM_COLUMNS = "item_columns"  # what a live slot keeps per delta table (Delta.per_table)


@dataclass(frozen=True)
class ItemColumns:
    """Per item row, what features read (object columns hold None for a null)."""

    company: np.ndarray  # object
    city: np.ndarray  # object
    title: np.ndarray  # object (str)
    skills: np.ndarray  # object (list of str, or None)
    employment: np.ndarray  # object
    lat: np.ndarray  # float64, NaN unknown
    lon: np.ndarray
    remote: np.ndarray  # bool
    level: np.ndarray  # float64 seniority index (SENIORITY), NaN unknown
    posted_day: np.ndarray  # float64 days since the epoch, NaN unknown

    @classmethod
    def of(cls, items: pd.DataFrame) -> ItemColumns:
        n = len(items)

        def obj(col: str) -> np.ndarray:
            if col not in items.columns:
                return np.full(n, None, dtype=object)
            s = items[col].astype(object)
            return s.where(s.notna(), None).to_numpy(object)

        lat, lon, remote = item_places(items)
        level = (
            items["seniority"].map(_LEVEL).astype(float).to_numpy()
            if "seniority" in items.columns
            else np.full(n, np.nan)
        )
        posted = np.full(n, np.nan)
        if "posted_at" in items.columns:
            ts = pd.to_datetime(items["posted_at"], utc=True, errors="coerce")
            ok = ts.notna().to_numpy()
            posted[ok] = ts[ok].astype("int64").to_numpy() / _DAY_NS
        return cls(obj("company"), obj("city"), obj("title"), obj("skills"),
                   obj("employment_type"), lat, lon, remote, level, posted)  # fmt: skip

    @classmethod
    def join(cls, parts: list[ItemColumns]) -> ItemColumns:
        """The rows of ``parts`` (at least one), in order."""
        return cls(*(np.concatenate([getattr(p, f) for p in parts])
                     for f in cls.__dataclass_fields__))  # fmt: skip

    def take(self, idx: np.ndarray) -> ItemColumns:
        return ItemColumns(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    def __len__(self) -> int:
        return len(self.title)


_BY_SLOT: weakref.WeakKeyDictionary[Slot, ItemColumns] = weakref.WeakKeyDictionary()


def slot_columns(snap: Slot) -> ItemColumns:
    """The snapshot's ``ItemColumns``, made once per loaded slot."""
    cols = _BY_SLOT.get(snap)
    if cols is None:
        cols = _BY_SLOT[snap] = ItemColumns.of(snap.items)
    return cols


@dataclass(frozen=True)
class Candidates:
    """One request's retrieved candidates [N], in retrieval order."""

    job_ids: np.ndarray  # int64
    score: np.ndarray  # float64: the retrieval's own score (what it ordered by)
    query_cos: np.ndarray  # float64: cosine to the query-alone embedding; NaN without one
    heads: np.ndarray  # float64 [N, T]: cosine to the request embedding of each task head
    bm25: np.ndarray  # float64: BM25 / the query's attainable score; NaN without text
    coverage: np.ndarray  # float64: share of the query's terms the job's text holds; NaN
    cols: ItemColumns


# A candidate matches what was typed when its title holds half the query's terms, or its text
# all of them ("registered nurse": a nurse job does; a sheet-metal job near the member, or a
# garden labourer whose text mentions a plant nursery, does not).
MATCH_TITLE, MATCH_TEXT = 0.5, 1.0


def query_tiers(coverage: np.ndarray, title_share: np.ndarray) -> np.ndarray:
    """int8 [N]: 0 for a candidate that matches the query (``MATCH_TITLE`` of its terms in the
    title, or ``MATCH_TEXT`` in the text), 1 for one that does not; all 0 without a query
    (NaN) or when none matches (nothing to keep first). A ranked search orders by tier, then
    by the ranker's score: the ranker weighs a member's fit among the jobs that match what
    was typed, and never puts a job the query does not ask for above one it does."""
    title = np.nan_to_num(title_share, nan=0.0)
    text = np.nan_to_num(coverage, nan=0.0)
    match = (title >= MATCH_TITLE) | (text >= MATCH_TEXT)
    if not match.any():
        return np.zeros(len(coverage), dtype=np.int8)
    return (~match).astype(np.int8)


def _coverage(terms: TermIndex, text: str, rows: np.ndarray, delta_docs: object | None,
              pos: np.ndarray) -> np.ndarray:  # fmt: skip
    """Share of ``text``'s distinct terms in each candidate's text (snapshot ``rows`` >= 0
    through the term index's postings, delta positions ``pos`` >= 0 through their counts)."""
    query = list(dict.fromkeys(tokens(text)))
    out = np.zeros(len(rows))
    if not query:
        return out
    for term in query:
        docs = terms.docs_with(term)  # ascending rows
        if len(docs):
            at = np.minimum(np.searchsorted(docs, rows), len(docs) - 1)
            out += (rows >= 0) & (docs[at] == rows)
        if delta_docs is not None and (pos >= 0).any():
            post = delta_docs.postings.get(term)  # type: ignore[attr-defined]
            if post is not None:
                out += (pos >= 0) & np.isin(pos, post[0])
    return out / len(query)


def gather(
    view: LiveView,
    job_ids: np.ndarray,
    scores: np.ndarray,
    query_vec: np.ndarray | None,
    head_vecs: np.ndarray | None,
    text: str | None,
) -> Candidates:
    """The candidates ``job_ids`` int64 [N] (live jobs of ``view``, retrieval order) with
    their retrieval ``scores`` [N]: cosines to ``query_vec`` float32 [d] (the query alone)
    and to each row of ``head_vecs`` float32 [T, d] (the request per task head), BM25 and
    term coverage of ``text``, and their item columns (a delta job's upserted record)."""
    snap, delta = view.snap, view.delta
    job_ids = np.asarray(job_ids, dtype=np.int64)
    n = len(job_ids)
    located = _locate(snap, delta, job_ids)
    pos, rows = located
    vecs = candidate_vectors(snap, delta, job_ids, located)  # [N, d]
    query_cos = np.full(n, np.nan) if query_vec is None else (vecs @ query_vec).astype(float)
    if head_vecs is None:
        heads = np.full((n, 0), np.nan)
    else:
        heads = (vecs @ np.asarray(head_vecs, dtype=np.float32).T).astype(float)
    bm25 = coverage = np.full(n, np.nan)
    in_delta = pos >= 0
    docs = delta.terms(snap.items) if in_delta.any() and snap.terms is not None else None
    if text is not None and text.strip() and snap.terms is not None:
        bm25 = np.zeros(n)
        at = rows >= 0
        bm25[at] = snap.terms.scores(text)[rows[at]]
        if docs is not None:
            bm25[in_delta] = snap.terms.score_docs(text, docs)[pos[in_delta]]
        bm25 /= snap.terms.attainable(text)
        coverage = _coverage(snap.terms, text, rows, docs, pos)
    cols = slot_columns(snap).take(np.maximum(rows, 0))
    if in_delta.any():
        # Each delta table's columns once for the slot, joined once per view (per request
        # the conversion cost ~2 ms of pandas, per view ~10 ms at 1,000 delta rows).
        every = delta.once(ITEM_COLUMNS, lambda: ItemColumns.join(
            delta.per_table(ITEM_COLUMNS, ItemColumns.of, snap.items)))  # fmt: skip
        fresh = every.take(pos[in_delta])
        for f in cols.__dataclass_fields__:
            getattr(cols, f)[in_delta] = getattr(fresh, f)
    return Candidates(job_ids, np.asarray(scores, dtype=float), query_cos, heads, bm25,
                      coverage, cols)  # fmt: skip
