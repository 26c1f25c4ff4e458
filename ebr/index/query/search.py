"""The one search path over a live slot: filters + planner + tombstones + upserted delta.

    snapshot rows:  eligible = filter(attributes) AND open AND NOT (tombstoned or superseded)
                    -> planner.checked_search (exact subset scan or ANN with an id selector);
                       deletes alone: postfilter.postfiltered_search (the index's own search)
    delta rows:     records upserted since the snapshot, filtered the same way, scanned exactly
    merge:          top-k by score; every result passes the filter and is live

A closed job (``active`` false) is not live: whether a slot holds it (one built before slots
left closed jobs out, ``ebr.release.slots``) or a streamed upsert brings it (an update that
closes the job), no retrieval returns it, filter or not; like a tombstone it is left out of
what a query may return, so an unfiltered query keeps its unfiltered plan (the deletes' one
when the slot holds closed rows).

So the guarantees of the planner (no ineligible result; k results whenever k are eligible)
hold for the live view too: the delta is searched exhaustively. ``ebr.index.query.retrieve``
(through ``LiveSlot.query``, and ``LiveSlot.search``, its scores and ids) is the only caller:
serving, evaluation, benchmarks and tests all search through it.

Three retrievals (``RETRIEVALS``) share that view and those guarantees:

- ``ebr``: the request embedding against the job vectors (``search_view``);
- ``term``: BM25 over the slot's job text (``term_view``, ``ebr.index.query.terms``): every eligible
  live job sharing a query term is scored, so k come back whenever k eligible jobs share one;
- ``hybrid``: both lists, ``HYBRID_DEPTH`` deep, fused
  (``ebr.index.query.fusion``: reciprocal rank or normalised scores, weighted); k results
  whenever k jobs are eligible (the EBR list fills them).

Size: the one search path (scope, snapshot, delta, merge) and its result type; the retrievals
that call it are ``ebr.index.query.retrieve``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa

from ebr.index.query.attributes import AttributeTable
from ebr.index.query.delta import merge_topk, search_delta
from ebr.index.query.filters import Filter
from ebr.index.query.fusion import HYBRID_EBR_WEIGHT, HYBRID_FUSION, fuse_lists
from ebr.index.query.masks import mask_info
from ebr.index.query.planner import PlannerParams, checked_search
from ebr.index.query.postfilter import postfiltered_search
from ebr.index.query.slot import Slot, item_places, plain_columns
from ebr.index.query.terms import DocTerms, JoinedTerms, term_text, top_rows
from ebr.index.query.vectors import NORM_TOLERANCE, check_queries

T = TypeVar("T")
RETRIEVALS = ("ebr", "term", "hybrid")
HYBRID_DEPTH = 100  # each list hybrid retrieval fuses is this deep (k when k is larger)


@dataclass(frozen=True)
class Hits:
    """Results of a live search: scores float32 [q, k] (-inf pads), job_ids int64 [q, k]
    (-1 pads), the display rows of the delta jobs among them (the snapshot's are in
    ``Slot.rows``) and the plan. Read-only: results may share their (empty) ``delta_items``."""

    scores: np.ndarray
    job_ids: np.ndarray
    # The delta jobs' item rows as a frame (``delta_items``), or how to make it: a frame is
    # made only for a caller that reads it (a signed-in search's three lists made three per
    # request, ~1.4 ms, that nothing on the serving path read).
    items: pd.DataFrame | Callable[[], pd.DataFrame]
    plan: dict[str, Any]
    # The same delta rows as plain Python values by job id (the response's null policy,
    # ``slot.plain_columns``), converted once per live view: a response reads these, not the
    # frame (converting the frame per request made a streamed job's page cost 4x). Empty
    # exactly when no delta job is among ``job_ids``.
    delta_rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    _made: dict[str, pd.DataFrame] = field(default_factory=dict, init=False, compare=False,
                                           repr=False)  # fmt: skip

    @property
    def delta_items(self) -> pd.DataFrame:
        """The delta jobs' item rows among ``job_ids`` (made on first read)."""
        if isinstance(self.items, pd.DataFrame):
            return self.items
        frame = self._made.get("items")
        if frame is None:
            frame = self._made["items"] = self.items()
        return frame


@dataclass(frozen=True)
class Delta:
    """The upserted part of one consistent live view (see ``ebr.index.live.slot._View``)."""

    ids: np.ndarray  # [>= size] int64 job ids by position
    vecs: np.ndarray  # [>= size, d] float32
    alive: np.ndarray  # [size] bool: positions holding a live record
    tables: list[pa.Table]  # item rows in position order (at least ``size`` rows)
    # What is derived from each table (its frame, plain rows, term counts, ranker columns,
    # places), shared by the views of one live slot (its tables only grow, so a table is
    # converted once however many views read it; ``per_table``): (what, id) -> (table, value).
    table_cache: dict[tuple[str, int], tuple[pa.Table, Any]] = field(
        default_factory=dict, compare=False, repr=False
    )
    # What every query of this view would otherwise derive again from the tables: the item
    # rows as one frame, their term counts (~10 ms a hybrid query with 500 delta rows).
    _memo: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    def _frame(self, like: pd.DataFrame) -> pd.DataFrame:
        """Every item row as one frame (``like`` is always the snapshot's items: one view,
        one slot), joined from the tables' frames once per view."""
        if not self.tables:
            return like.iloc[:0]
        return self.once("frame", lambda: pd.concat(self._table_frames(like), ignore_index=True))

    def items(self, positions: np.ndarray, like: pd.DataFrame) -> pd.DataFrame:
        """Item rows at ``positions``, in the dtypes of ``like`` (the snapshot's items)."""
        if not len(positions) or not self.tables:
            return like.iloc[:0].copy()
        return self._frame(like).iloc[positions]

    def records(self, positions: np.ndarray, like: pd.DataFrame) -> dict[int, dict[str, Any]]:
        """job id -> the item row at each of ``positions`` as plain values, in the dtypes of
        ``like`` (the snapshot's items). Each log table is converted once for the live slot
        (``per_table``), not once per view: a stream makes a view a second."""
        bounds = self.once("bounds", lambda: np.cumsum([0] + [t.num_rows for t in self.tables]))
        tables = self.once("plain", lambda: self.per_table("plain", plain_columns, like))
        out = {}
        for pos in positions.tolist():
            i = int(np.searchsorted(bounds, pos, side="right")) - 1
            plain, row = tables[i], pos - int(bounds[i])
            out[int(plain["job_id"][row])] = {c: v[row] for c, v in plain.items()}
        return out

    def once(self, key: str, make: Callable[[], T]) -> T:
        """``make()``, once per view (kept as ``key``)."""
        out = self._memo.get(key)
        if out is None:
            out = self._memo[key] = make()
        return out  # type: ignore[no-any-return]

    def per_table(self, key: str, make: Callable[[pd.DataFrame], T], like: pd.DataFrame) -> list[T]:
        """``make`` of each table's rows (a frame in ``like``'s dtypes), in position order:
        each table's worked out once for the live slot (``table_cache``), not once per view
        (the whole delta's term counts made the first hybrid query on every view cost ~60 ms
        at 1,000 delta rows, ~230 ms at 5,000)."""
        frames = self._table_frames(like)
        return [self._cached(key, t, make, f) for t, f in zip(self.tables, frames, strict=True)]

    def _table_frames(self, like: pd.DataFrame) -> list[pd.DataFrame]:
        """Each table's rows in ``like``'s dtypes, converted once for the live slot; what was
        kept for tables merged away (their rows live in a new table) is dropped, once a view."""
        self.once("pruned", self._prune)
        dtypes = like.dtypes.to_dict()

        def frame(table: pa.Table) -> pd.DataFrame:
            return table.to_pandas().astype(dtypes)

        return [self._cached("frame", t, frame, t) for t in self.tables]

    def _cached(self, key: str, table: pa.Table, make: Callable[[Any], T], arg: Any) -> T:
        """``make(arg)`` for ``table`` (as ``key``), kept in ``table_cache`` for the slot (a
        table's id is only trusted with the table itself: ids are reused)."""
        hit = self.table_cache.get((key, id(table)))
        if hit is None or hit[0] is not table:
            hit = self.table_cache[(key, id(table))] = (table, make(arg))
        return hit[1]  # type: ignore[no-any-return]

    def _prune(self) -> bool:
        current = {id(t) for t in self.tables}
        for stale in [c for c in list(self.table_cache) if c[1] not in current]:
            self.table_cache.pop(stale, None)
        return True

    def places(self, like: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``Slot.places`` of the delta's positions (``item_places``): each table's once for
        the slot, joined once per view."""

        def joined() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            parts = self.per_table("places", item_places, like)
            if not parts:
                return item_places(like.iloc[:0])
            lat, lon, remote = (np.concatenate([p[i] for p in parts]) for i in range(3))
            return lat, lon, remote

        return self.once("places", joined)

    def open_alive(self) -> np.ndarray:
        """[size] bool: ``alive`` minus positions whose record closes the job (``active``
        false), worked out once per view."""
        out = self._memo.get("open_alive")
        if out is None:
            out = self.alive
            if len(out) and self.tables and "active" in self.tables[0].schema.names:
                active = pa.concat_arrays(
                    [c for t in self.tables for c in t.column("active").chunks]
                )
                closed = ~np.asarray(active.fill_null(False).to_numpy(zero_copy_only=False))
                out = out & ~closed[: len(out)] if closed[: len(out)].any() else out
            self._memo["open_alive"] = out
        return out  # type: ignore[no-any-return]

    def terms(self, like: pd.DataFrame) -> DocTerms:
        """Term counts of every item row (``ebr.index.query.terms.term_text``): each table's
        counted once for the live slot (``per_table``), joined once per view."""
        return self.once("terms", lambda: JoinedTerms(self.per_table("terms", _doc_terms, like)))

    def warm(self, like: pd.DataFrame, *more: tuple[str, Callable[[pd.DataFrame], Any]]) -> None:
        """Work out now what queries derive from each table on first use (frames, plain rows,
        term counts, places, and ``more``: (key, make) as ``per_table`` takes them): a slot
        opened on a long log would otherwise make its first request pay for all of it (~15 s
        at 40,000 streamed rows)."""
        for key, make in (("plain", plain_columns), ("terms", _doc_terms),
                          ("places", item_places), *more):  # fmt: skip
            self.per_table(key, make, like)


@dataclass(frozen=True)
class Scope:
    """What one query may return, worked out once (hybrid's two lists share it)."""

    eligible: np.ndarray | None  # [n] bool snapshot rows passing the filter, open, not deleted;
    # None: all
    alive: np.ndarray  # [size] bool delta positions holding a live, open record passing the filter
    n_deleted: int  # snapshot rows deleted (tombstoned or superseded)
    n_delta: int  # alive.sum(): delta records the query searches
    n_closed: int = 0  # snapshot rows of closed jobs (never returned)


def scope(
    snap: Slot,
    deleted: np.ndarray,
    delta: Delta,
    attributes: Callable[[], AttributeTable],
    flt: Filter | None,
    n_deleted: int | None = None,
) -> Scope:
    """The ``Scope`` of a query with ``flt`` over ``snap`` minus ``deleted`` [n] bool rows
    plus ``delta``; ``n_deleted`` (deleted's count, which a live view keeps) saves an [n]
    count. Without a filter, deletes or delta this reads no [n] array: the unfiltered plan
    then costs what the index's own search does."""
    if n_deleted is None:
        n_deleted = int(np.count_nonzero(deleted))
    eligible = attributes().mask(flt) if flt is not None else None
    opened = snap.open_rows  # None: no closed row (a frozen mask, shared by unfiltered views)
    if n_deleted:
        eligible = ~deleted if eligible is None else eligible & ~deleted
        if opened is not None:
            eligible &= opened
    elif opened is not None:
        eligible = opened if eligible is None else eligible & opened
    alive = delta.open_alive()
    n_delta = int(np.count_nonzero(alive)) if len(alive) else 0
    if flt is not None and n_delta:
        pos = np.flatnonzero(alive)
        items = delta.items(pos, snap.items).reset_index(drop=True)
        alive = np.zeros_like(alive)
        alive[pos[AttributeTable.from_items(items).mask(flt)]] = True
        n_delta = int(np.count_nonzero(alive))
    n_closed = 0 if opened is None else len(opened) - mask_info(opened).count
    return Scope(eligible, alive, n_deleted, n_delta, n_closed)


_EMPTY: weakref.WeakKeyDictionary[Slot, pd.DataFrame] = weakref.WeakKeyDictionary()


def _no_items(snap: Slot) -> pd.DataFrame:
    """An empty frame of the snapshot's item columns and dtypes, made once per slot and
    shared, like the slot, by every result without delta rows (read-only, as ``Hits`` says):
    a fresh one costs ~10 us a query, as much as some indexes' whole search."""
    empty = _EMPTY.get(snap)
    if empty is None:
        empty = _EMPTY[snap] = snap.items.iloc[:0].copy().reset_index(drop=True)
    return empty


def _checked(queries: np.ndarray, k: int, snap: Slot) -> np.ndarray:
    """``check_queries``, with a cheap accept for what serving sends: C-contiguous float32
    [q, d] rows whose squared norms lie within half the unit tolerance of 1 (NaN and inf
    fail that test) pass as they are (one fused dot product instead of check_vectors' finite
    and norm passes, ~8 us a query); everything else, and every error message, takes
    ``check_queries``."""
    ok = type(queries) is np.ndarray and queries.dtype == np.float32 and queries.ndim == 2
    if ok and k >= 1 and len(queries) and queries.flags.c_contiguous:
        lo, hi = 1 - NORM_TOLERANCE / 2, 1 + NORM_TOLERANCE / 2
        if queries.shape[1] == snap.dim and (
            lo <= float(np.dot(queries[0], queries[0])) <= hi  # one query: ~0.3 us less
            if len(queries) == 1
            else all(lo <= v <= hi for v in np.vecdot(queries, queries).tolist())
        ):
            return queries
    return check_queries(queries, k, snap.dim, snap.name)


def _doc_terms(frame: pd.DataFrame) -> DocTerms:
    return DocTerms(term_text(frame))


def _hits(
    snap: Slot,
    delta: Delta,
    alive: np.ndarray,
    scores: np.ndarray,
    job_ids: np.ndarray,
    plan: dict[str, Any],
) -> Hits:
    """Hits with the display rows of the delta jobs among ``job_ids`` (read from the same
    view the search used)."""
    size = len(alive)
    if not plan["delta_items"]:
        return Hits(scores, job_ids, _no_items(snap), plan)
    hit_pos = np.flatnonzero(alive & np.isin(delta.ids[:size], job_ids[job_ids >= 0]))
    if not len(hit_pos):  # no streamed job on the page: no frame to build (~0.2 ms a query)
        return Hits(scores, job_ids, _no_items(snap), plan)

    def items() -> pd.DataFrame:
        return delta.items(hit_pos, snap.items).reset_index(drop=True)

    return Hits(scores, job_ids, items, plan, delta.records(hit_pos, snap.items))


def search_view(
    snap: Slot,
    deleted: np.ndarray,
    delta: Delta,
    attributes: Callable[[], AttributeTable],
    queries: np.ndarray,
    k: int,
    flt: Filter | None = None,
    params: PlannerParams | None = None,
    scoped: Scope | None = None,
) -> Hits:
    """Top-k live jobs passing ``flt`` per query ([q, d] finite unit vectors of the slot's
    model version), over ``snap`` minus ``deleted`` [n] bool rows plus ``delta``.
    ``attributes()`` gives the snapshot's AttributeTable (only called with a filter);
    ``scoped``: ``scope(...)`` of the same arguments, when the caller has it already."""
    q = _checked(queries, k, snap)
    sc = scoped or scope(snap, deleted, delta, attributes, flt)
    if flt is None and sc.eligible is not None:  # deletes alone exclude few rows, spread out
        scores, rows, plan = postfiltered_search(
            snap.index, snap.vectors, q, k, sc.eligible, params
        )
    else:
        scores, rows, plan = checked_search(snap.index, snap.vectors, q, k, sc.eligible, params)
    # The planner returns min(k, eligible) rows a query: with k eligible, no -1 pad to keep.
    if plan.eligible >= k:
        job_ids = snap.job_ids[rows]
    else:
        job_ids = np.where(rows >= 0, snap.job_ids[np.maximum(rows, 0)], -1)
    if sc.n_delta:
        part = search_delta(delta.ids, delta.vecs, sc.alive, q, k)
        scores, job_ids = merge_topk([(scores, job_ids), part], k)
    # vars: Plan holds only scalars, so this is asdict without its recursive deep copy.
    info = {**vars(plan), "deleted_rows": sc.n_deleted, "closed_rows": sc.n_closed,
            "delta_items": sc.n_delta}  # fmt: skip
    if not sc.n_delta:
        return Hits(scores, job_ids, _no_items(snap), info)
    return _hits(snap, delta, sc.alive, scores, job_ids, info)


def check_texts(texts: Sequence[str] | None, n: int | None = None) -> list[str]:
    """Query texts of a term search: a list of strings (one per query vector when ``n``)."""
    if texts is None or isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError("term and hybrid retrieval need the query texts: a list of strings")
    if n is not None and len(texts) != n:
        raise ValueError(f"{len(texts)} query texts for {n} query vectors")
    return list(texts)


def term_view(
    snap: Slot,
    deleted: np.ndarray,
    delta: Delta,
    attributes: Callable[[], AttributeTable],
    texts: Sequence[str],
    k: int,
    flt: Filter | None = None,
    scoped: Scope | None = None,
) -> Hits:
    """BM25 top-k live jobs passing ``flt`` per query text: the snapshot's term index over the
    eligible rows, merged with the live delta scored on the snapshot's statistics. Only jobs
    sharing a query term are returned (score > 0). ``scoped`` as in ``search_view``."""
    texts = check_texts(texts)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if snap.terms is None:
        raise ValueError(
            f"slot {snap.name} has no term index (built before term retrieval existed); "
            "rebuild or compact it to search by terms"
        )
    sc = scoped or scope(snap, deleted, delta, attributes, flt)
    eligible, alive = sc.eligible, sc.alive
    pos = np.flatnonzero(alive)
    docs = delta.terms(snap.items) if len(pos) else DocTerms([])
    live_terms = docs.vocabulary(alive)
    scores = np.full((len(texts), k), -np.inf, dtype=np.float32)
    job_ids = np.full((len(texts), k), -1, dtype=np.int64)
    for i, text in enumerate(texts):
        s, rows = top_rows(snap.terms.scores(text), k, eligible)
        ids = np.where(rows >= 0, snap.job_ids[np.maximum(rows, 0)], -1)
        if len(pos):
            ds, drows = top_rows(snap.terms.score_docs(text, docs)[pos], min(k, len(pos)))
            dids = np.where(drows >= 0, delta.ids[pos[np.maximum(drows, 0)]], -1)
            (s,), (ids,) = merge_topk([(s[None], ids[None]), (ds[None], dids[None])], k)
        scores[i], job_ids[i] = s, ids
    plan = {
        "strategy": "bm25",
        "eligible": int(eligible.sum()) if eligible is not None else len(snap.job_ids),
        "deleted_rows": sc.n_deleted,
        "closed_rows": sc.n_closed,
        "delta_items": len(pos),
        # Per query: the share of its terms some live job has (what hybrid weights BM25 by),
        # and the best score it could reach (what hybrid divides BM25 scores by).
        "coverage": [snap.terms.coverage(t, live_terms) for t in texts],
        "attainable": [snap.terms.attainable(t) for t in texts],
    }
    return _hits(snap, delta, alive, scores, job_ids, plan)


def fuse(
    ebr: Hits,
    term: Hits,
    k: int,
    ebr_weight: float = HYBRID_EBR_WEIGHT,
    fusion: str = HYBRID_FUSION,
) -> Hits:
    """Hybrid hits: the two lists fused (``ebr.index.query.fusion``; scores are the fused ones);
    the delta rows of both, the plans of both. BM25 scores are divided by the best score the
    query could reach (``TermIndex.attainable``), so a job matching half the query's weight
    of words counts half, and BM25's weight is scaled per query by its term coverage
    (``TermIndex.coverage``): a query word no job has (a misspelling, a synonym the
    catalogue never uses) leaves the term list matching only the rest of the query, so the
    embedding list, which still reads it, counts for more."""
    if not 0.0 <= ebr_weight <= 1.0:
        raise ValueError(f"ebr_weight must be in [0, 1], got {ebr_weight}")
    lists, values = [ebr.job_ids, term.job_ids], [ebr.scores, term.scores]
    coverage = np.asarray(term.plan["coverage"], dtype=np.float64)
    attainable = np.asarray(term.plan["attainable"], dtype=np.float64)
    weights = [ebr_weight, 1 - ebr_weight]
    scores, job_ids = fuse_lists(
        lists, values, weights, k, fusion, [None, coverage], [None, attainable]
    )
    plain = page_rows(job_ids, ebr.delta_rows, term.delta_rows)
    return Hits(scores, job_ids, page_items(job_ids, ebr, term), {
        "strategy": "hybrid",
        "fusion": fusion,
        "ebr_weight": ebr_weight,
        "ebr": ebr.plan,
        "term": term.plan,
    }, plain)  # fmt: skip


def page_items(job_ids: np.ndarray, *found: Hits) -> pd.DataFrame | Callable[[], pd.DataFrame]:
    """The delta item rows among ``found`` of the jobs on the page ``job_ids`` (``Hits.items``:
    the first list's shared empty frame when none has any, else made when read)."""
    if not any(h.delta_rows for h in found):
        return found[0].items

    def items() -> pd.DataFrame:
        rows = pd.concat([h.delta_items for h in found if h.delta_rows])
        rows = rows[rows["job_id"].isin(job_ids[job_ids >= 0])]
        return rows.drop_duplicates("job_id").reset_index(drop=True)

    return items


def page_rows(job_ids: np.ndarray, *found: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The plain delta rows among ``found`` of the jobs on the page ``job_ids``."""
    if not any(found):
        return {}
    wanted = set(job_ids[job_ids >= 0].tolist())
    return {j: row for rows in found for j, row in rows.items() if j in wanted}
