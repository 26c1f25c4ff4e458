"""Live slots: an immutable snapshot plus a durable log of upserts and deletes, merged at query.

A ``LiveSlot`` is a loaded ``Slot`` and its log (``ebr.index.live.wal``, in ``<slot-name>.log/``
beside the slot). An append is durable (fsynced) before it becomes visible or is acknowledged,
so reopening the slot (``open_live``: load the snapshot, replay the log) restores everything
that was acknowledged. Searching merges an ANN search of the snapshot, filtered by tombstones,
with an exact search of the upserted vectors (the delta). ``ebr.index.live.handover`` folds
both into a new immutable slot and hands the log over to it; a release that names the new
slot serves it (``ebr.release.compaction``).

    python -c "from ebr.index.live.slot import open_live; s = open_live('var/demo/slots/<slot>'); \
print(s.stats())"

Size: one class whose view, appends, replay and seal share one lock and the view's invariants;
retrieval is ``ebr.index.query.retrieve``, compaction and hand-over ``handover``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Concatenate, ParamSpec

import numpy as np
import pandas as pd
import pyarrow as pa

from ebr.index.live.overlay import admit_record, records_to_table
from ebr.index.live.wal import DELETE, UPSERT, LogWriter, Record, ReplayInfo, log_dir_for, replay
from ebr.index.query.attributes import AttributeTable
from ebr.index.query.retrieve import LiveView, retrieve
from ebr.index.query.search import Delta, Hits, Scope, scope
from ebr.index.query.slot import Slot, load_slot
from ebr.index.query.vectors import check_vectors

LOG_VERIFY_S = 10.0  # a read-only replica re-reads its whole log this often (refresh)
TABLES_MERGE = 1024  # delta item tables kept apart before they are merged into one
MAX_SKIPPED_SHOWN = 20  # rejected log rows kept (with reasons) for stats(); all are counted
log = logging.getLogger(__name__)
P = ParamSpec("P")


@dataclass(frozen=True)
class _View:
    """All a search reads. Appends publish a new view instead of mutating one, so a search that
    took a view sees one consistent state without holding the lock."""

    lsn: int  # last applied log sequence number
    deleted: np.ndarray  # [n] bool: snapshot row tombstoned or superseded by a later upsert
    n_deleted: int
    ids: np.ndarray  # [cap] int64 delta job ids by position; rows < size are never rewritten
    vecs: np.ndarray  # [cap, d] float32 delta vectors, same positions
    alive: np.ndarray  # [size] bool: position holds the latest version of a job not deleted


@dataclass(frozen=True)
class Contents:
    """What a live slot serves as of log position ``lsn`` (``LiveSlot.contents``)."""

    lsn: int
    vectors: np.ndarray  # float32 [n, d]: snapshot rows not deleted, then the delta
    items: pd.DataFrame  # their item rows, same order
    log_problems: tuple[str, ...]  # damage the log's replay found (acknowledged writes lost)


def _over_view(
    fn: Callable[Concatenate[LiveView, P], Hits],
) -> Callable[Concatenate[LiveSlot, P], Hits]:
    """``fn`` as a method that passes the slot's current ``view()`` first."""

    def method(self: LiveSlot, *args: P.args, **kwargs: P.kwargs) -> Hits:
        return fn(self.view(), *args, **kwargs)

    method.__doc__ = fn.__doc__
    return method


class LiveSlot:
    """A snapshot slot plus its log. Appends and searches may run on different threads."""

    def __init__(self, snapshot: Slot, log_dir: Path) -> None:
        self.snapshot = snapshot
        self.log_dir = log_dir
        self._lock = threading.Lock()  # serialises appends (log order = apply order)
        self._schema = pa.Schema.from_pandas(snapshot.items, preserve_index=False)
        self._pos: dict[int, int] = {}  # job_id -> delta position of its live version
        self._tables: list[pa.Table] = []  # delta items, one table per upsert, in position order
        self._merged = 0  # how many of the first tables are merges (merge_tables)
        self._per_table: dict[Any, Any] = {}  # what each table derives (search.Delta.per_table)
        n, d = len(snapshot.job_ids), snapshot.dim
        empty = np.empty(0, np.int64), np.empty((0, d), np.float32), np.empty(0, bool)
        self._view = _View(0, np.zeros(n, bool), 0, *empty)
        self._writer: LogWriter | None = None
        self._replayed: ReplayInfo | None = None
        self._tail: ReplayInfo | None = None  # where the last replay of the log ended
        self._verified = time.monotonic()  # when the whole log was last read (open, refresh)
        self._sealed: str | None = None  # set by seal_into: the slot that now takes the writes
        self._attrs: AttributeTable | None = None  # built by the first filtered query
        self._skipped: list[str] = []  # first rejected log rows: "lsn 7 row 2 (...): lat: ..."
        self._n_skipped = 0
        self._log_problems: tuple[str, ...] = ()  # damage the last replay found (wal.replay)
        self._scoped: tuple[_View, Delta, Scope] | None = None  # see _current

    def __enter__(self) -> LiveSlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the log (and its writer lock); searches keep working, appends do not."""
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    def deleted_rows(self) -> np.ndarray:
        """[n] bool, read-only: snapshot rows tombstoned or superseded by a later upsert."""
        out = self._view.deleted.view()
        out.flags.writeable = False
        return out

    def delta(self) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        """The live upserted records, latest version per job, minus later deletes.

        Returns:
            job_ids int64 [m], vectors float32 [m, d] and items (m rows, the snapshot's item
            columns), all in upsert order.
        """
        with self._lock:
            view, tables = self._view, list(self._tables)
        return self._delta_of(view, tables)

    def _delta_of(
        self, view: _View, tables: list[pa.Table]
    ) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        pos = np.flatnonzero(view.alive)
        if tables:
            items = pa.concat_tables(tables).take(pa.array(pos)).to_pandas()
            items = items.astype(self.snapshot.items.dtypes.to_dict())
        else:
            items = self.snapshot.items.iloc[:0].copy()
        return view.ids[pos].copy(), view.vecs[pos].copy(), items

    def contents(self) -> Contents:
        """Everything the slot serves now, as of one log position: the snapshot rows not
        deleted and the delta, with the log's known damage (what a compaction folds)."""
        with self._lock:  # one state: tombstones and delta as of the same lsn
            view, tables = self._view, list(self._tables)
        keep = np.flatnonzero(~view.deleted)
        ids, vecs, items = self._delta_of(view, tables)
        snap = self.snapshot
        vectors = np.concatenate([np.asarray(snap.vectors[keep]), vecs])
        all_items = pd.concat([snap.items.iloc[keep], items], ignore_index=True)
        return Contents(view.lsn, vectors, all_items, self._log_problems)

    def seal_into(self, new_log: Path, after_lsn: int, new_name: str) -> int:
        """Copy the records appended after ``after_lsn`` into ``new_log`` (renumbered from 1)
        and mark this slot sealed into ``new_name``, under the append lock (no append lands
        between the copy and the seal); -> the records copied."""
        with self._lock:
            tail: list[Record] = []
            replay(self.log_dir, tail.append, after_lsn=after_lsn, quiet=self._log_problems)
            if tail:
                writer = LogWriter(new_log)
                try:
                    writer.resume(replay(new_log, lambda rec: None))
                    for i, rec in enumerate(tail, start=1):
                        writer.append(replace(rec, lsn=i))
                finally:
                    writer.close()
            self._sealed = new_name
        return len(tail)

    def stats(self) -> dict[str, Any]:
        """Sizes and log position, for health checks and deciding when to compact.
        Non-empty ``log_problems`` (damage, lost lsns): acknowledged writes missing: degraded."""
        v, r = self._view, self._replayed
        n, delta = len(v.deleted), int(v.alive.sum())
        return {
            "slot": self.snapshot.name,
            "model_version": self.snapshot.model_version,
            "lsn": v.lsn,
            "snapshot_items": n,
            "deleted_rows": v.n_deleted,
            "delta_items": delta,
            "dead_delta_positions": len(v.alive) - delta,
            "live_items": n - v.n_deleted + delta,
            "replayed_records": r.records if r else 0,
            "torn_bytes_dropped": r.torn_bytes if r else 0,
            "log_problems": list(self._log_problems),
            "log_bytes": sum(p.stat().st_size for p in self.log_dir.glob("*.wal")),
            "writable": self._writer is not None,
            "skipped_log_rows": self._n_skipped,
            "skipped_examples": list(self._skipped),
            "sealed_into": self._sealed,
        }

    def upsert(self, records: pd.DataFrame, vectors: np.ndarray) -> int:
        """Insert or replace jobs; durable when this returns (one fsync for the batch).

        Args:
            records: m rows, ``job_id`` (unique, >= 0) plus every item column of the snapshot.
            vectors: float32 [m, d] unit rows of the snapshot's model version; row i is job i.

        Returns:
            The log sequence number of the batch.
        """
        items = records_to_table(records, self.snapshot.items, self._schema)
        dim = self.snapshot.dim
        if not isinstance(vectors, np.ndarray) or vectors.shape != (items.num_rows, dim):
            shape = getattr(vectors, "shape", type(vectors).__name__)
            raise ValueError(
                f"vectors must be [{items.num_rows}, {dim}] (one per record, slot dim "
                f"{dim}); dim mismatch or misaligned, got shape {shape}"
            )
        vectors = check_vectors(vectors, "upsert vectors")
        ids = items.column("job_id").to_numpy().astype(np.int64)
        return self._append(lambda lsn: Record(UPSERT, lsn, ids, vectors, items))

    def delete(self, job_ids: np.ndarray | list[int]) -> int:
        """Tombstone ``job_ids`` [m] (unknown ids are no-ops); durable when this returns."""
        ids = np.asarray(job_ids)
        if ids.ndim != 1 or not len(ids) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"job_ids must be a non-empty 1-D integer array, got {ids!r:.80}")
        if (ids < 0).any():
            raise ValueError(f"job_ids must be >= 0, got {int(ids.min())}")
        unique = np.unique(ids.astype(np.int64))
        return self._append(lambda lsn: Record(DELETE, lsn, unique))

    def attributes(self) -> AttributeTable:
        """The snapshot's filterable attributes, built on first use (~2 s at 1M rows)."""
        if self._attrs is None:
            self._attrs = AttributeTable.from_items(self.snapshot.items)
        return self._attrs

    def view(self) -> LiveView:
        """What a retrieval reads now: the snapshot minus tombstones and the delta, as of the
        last published log position."""
        view, delta, unfiltered = self._current()
        return LiveView(self.snapshot, view.deleted, view.n_deleted, delta, self.attributes,
                        unfiltered)  # fmt: skip

    # Top-k live jobs passing a filter per query: ``ebr.index.query.retrieve.retrieve`` over
    # ``view()`` (its arguments after the view, typed as they are there).
    query = _over_view(retrieve)

    def _current(self) -> tuple[_View, Delta, Scope]:
        """The published view, its delta and its unfiltered ``Scope`` (the not-deleted mask),
        made once per view rather than once per query."""
        cached = self._scoped
        if cached is None or cached[0] is not self._view:
            # The view first, then the tables: tables only grow past a published view's size.
            view = self._view
            delta = Delta(view.ids, view.vecs, view.alive, list(self._tables), self._per_table)
            sc = scope(self.snapshot, view.deleted, delta, self.attributes, None, view.n_deleted)
            if sc.eligible is not None:  # a fresh ~deleted, fixed for the view: frozen, so the
                sc.eligible.flags.writeable = False  # planner caches what it derives from it
            cached = self._scoped = (view, delta, sc)
        return cached

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``query`` without a filter: scores [q, k] float32 descending and job_ids [q, k]
        int64; -inf / -1 pad only when fewer than k jobs are live."""
        hits = self.query(queries, k)
        return hits.scores, hits.job_ids

    def _append(self, make: Callable[[int], Record]) -> int:
        with self._lock:
            if self._sealed is not None:
                raise RuntimeError(
                    f"slot {self.snapshot.name} was compacted into {self._sealed}; "
                    "open that slot to write"
                )
            if self._writer is None:
                raise RuntimeError(f"live slot {self.snapshot.name} is open read-only or closed")
            rec: Record = make(self._writer.next_lsn)
            self._writer.append(rec)  # durable before it is visible or acknowledged
            self._apply(rec, copy=True)
            return rec.lsn

    def refresh(self) -> int:
        """Read-only replicas: apply records another process appended since the last replay.

        Returns how many were applied; searches running meanwhile keep their consistent view.
        """
        applied: list[Record] = []
        with self._lock:
            # Only what was appended since the last replay, but the whole log again every
            # LOG_VERIFY_S: damage to frames already applied (a disk fault) must show in
            # health, and a repair clear it (a replay that found damage is never tailed).
            now = time.monotonic()
            whole = now - self._verified >= LOG_VERIFY_S
            info = replay(self.log_dir, applied.append, self._view.lsn, self._log_problems,
                          since=None if whole else self._tail)  # fmt: skip
            self._tail, self._verified = info, now if whole else self._verified
            self._log_problems = info.problems  # logged once (``quiet``), reported until fixed
            for rec in applied:
                self._apply(self._admit(rec), copy=True)
        return len(applied)

    def _admit(self, rec: Record) -> Record:
        """``rec`` read back from the log minus rows that break what searches rely on.

        ``upsert`` refuses such rows before they are logged, but a log written by an older
        version (or by another writer) may hold some: one bad row must not stop the replay
        of everything else, so it is dropped, counted and logged (see ``stats``)."""
        rec, reasons = admit_record(rec, list(self.snapshot.items.columns))
        for reason in reasons:
            log.warning("slot %s log lsn %d: skipped %s", self.snapshot.name, rec.lsn, reason)
            if len(self._skipped) < MAX_SKIPPED_SHOWN:
                self._skipped.append(f"lsn {rec.lsn} {reason}")
        self._n_skipped += len(reasons)
        return rec

    def _apply(self, rec: Record, copy: bool) -> None:
        """Apply one record and publish the new view; ``copy`` arrays searches may hold."""
        v = self._view
        deleted, n_deleted = v.deleted, v.n_deleted
        rows = self.snapshot.row_positions(rec.job_ids)
        rows = np.unique(rows[rows >= 0])  # a row counts once in n_deleted, which searches trust
        if len(rows):
            deleted = deleted.copy() if copy else deleted
            n_deleted += int((~deleted[rows]).sum())
            deleted[rows] = True
        old = [self._pos.pop(j) for j in rec.job_ids.tolist() if j in self._pos]
        alive, ids, vecs = v.alive, v.ids, v.vecs
        if old:
            alive = alive.copy() if copy else alive
            alive[old] = False
        if rec.kind == UPSERT:
            assert rec.vectors is not None and rec.items is not None, "upserts carry both"
            size, m = len(alive), len(rec.job_ids)
            if size + m > len(ids):  # grow by doubling; old views keep the old buffers
                cap = max(2 * len(ids), size + m, 1024)
                ids = np.concatenate([ids[:size], np.empty(cap - size, np.int64)])
                vecs = np.concatenate([vecs[:size], np.empty((cap - size, vecs.shape[1]), "f4")])
            ids[size : size + m] = rec.job_ids  # beyond every published view's size
            vecs[size : size + m] = rec.vectors
            alive = np.concatenate([alive, np.ones(m, bool)])
            self._pos.update(zip(rec.job_ids.tolist(), range(size, size + m), strict=True))
            self._tables.append(rec.items)
            if len(self._tables) - self._merged >= TABLES_MERGE:  # tiny tables cost more than rows
                self._tables, self._merged = merge_tables(self._tables, self._merged)
        self._view = _View(rec.lsn, deleted, n_deleted, ids, vecs, alive)


def merge_tables(tables: list[pa.Table], merged: int) -> tuple[list[pa.Table], int]:
    """``tables`` (rows in position order) with the ones appended after the first ``merged``
    merged into one, which then takes in each earlier merge no bigger than it; -> the tables
    and how many of them are merges. Merges stay in decreasing sizes that at least double, so
    a row is merged again O(log n) times and what a view derives per table (``Delta.per_table``)
    is worked out again for a few recent rows, not for the whole delta every TABLES_MERGE
    upserts (~2 s at 40,000 streamed rows)."""
    out = pa.concat_tables(tables[merged:])
    while merged and tables[merged - 1].num_rows <= out.num_rows:
        merged -= 1
        out = pa.concat_tables([tables[merged], out])
    return [*tables[:merged], out.combine_chunks()], merged + 1


def open_live(slot_path: Path, verify: bool = True, writable: bool = True) -> LiveSlot:
    """Load the slot at ``slot_path`` and replay its log.

    ``writable`` takes the log's writer lock (one writer process per slot) and truncates a torn
    tail a crash left; a read-only open only stops before it. Damage in the log does not stop
    the open: every intact record is applied and ``stats()["log_problems"]`` lists the rest.

    Raises:
        RuntimeError: another process holds the writer lock. ValueError: an unknown record kind.
    """
    slot_path = Path(slot_path)
    live = LiveSlot(load_slot(slot_path, verify=verify), log_dir_for(slot_path))
    writer = LogWriter(live.log_dir) if writable else None  # lock before reading
    try:
        live._replayed = replay(live.log_dir, lambda rec: live._apply(live._admit(rec), False))
        live._log_problems = live._replayed.problems
        live._tail = live._replayed
        if writer is not None:
            writer.resume(live._replayed)
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    live._writer = writer
    return live
