"""The one search path over a live slot: filters + planner + tombstones + upserted delta.

    snapshot rows:  eligible = filter(attributes) AND NOT (tombstoned or superseded)
                    -> planner.filtered_search (exact subset scan or ANN with an id selector)
    delta rows:     records upserted since the snapshot, filtered the same way, scanned exactly
    merge:          top-k by score; every result passes the filter and is live

So the guarantees of the planner (no ineligible result; k results whenever k are eligible)
hold for the live view too: the delta is searched exhaustively. ``LiveSlot.query`` (and
``LiveSlot.search``, its scores and ids) is the only caller: serving, evaluation, benchmarks
and tests all search through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ebr.index.attributes import AttributeTable
from ebr.index.filters import Filter
from ebr.index.overlay import merge_topk, search_delta
from ebr.index.planner import PlannerParams, filtered_search
from ebr.index.slot import Slot, check_queries


@dataclass(frozen=True)
class Hits:
    """Results of a live search: scores float32 [q, k] (-inf pads), job_ids int64 [q, k]
    (-1 pads), the display rows of the delta jobs among them (the snapshot's are in
    ``Slot.rows``) and the plan."""

    scores: np.ndarray
    job_ids: np.ndarray
    delta_items: pd.DataFrame
    plan: dict[str, Any]


@dataclass(frozen=True)
class Delta:
    """The upserted part of one consistent live view (see ``ebr.index.live._View``)."""

    ids: np.ndarray  # [>= size] int64 job ids by position
    vecs: np.ndarray  # [>= size, d] float32
    alive: np.ndarray  # [size] bool: positions holding a live record
    tables: list[pa.Table]  # item rows in position order (at least ``size`` rows)

    def items(self, positions: np.ndarray, like: pd.DataFrame) -> pd.DataFrame:
        """Item rows at ``positions``, in the dtypes of ``like`` (the snapshot's items)."""
        if not len(positions) or not self.tables:
            return like.iloc[:0].copy()
        table = pa.concat_tables(self.tables).take(pa.array(positions))
        return table.to_pandas().astype(like.dtypes.to_dict())


def search_view(
    snap: Slot,
    deleted: np.ndarray,
    delta: Delta,
    attributes: Callable[[], AttributeTable],
    queries: np.ndarray,
    k: int,
    flt: Filter | None = None,
    params: PlannerParams | None = None,
) -> Hits:
    """Top-k live jobs passing ``flt`` per query ([q, d] finite unit vectors of the slot's
    model version), over ``snap`` minus ``deleted`` [n] bool rows plus ``delta``.
    ``attributes()`` gives the snapshot's AttributeTable (only called with a filter)."""
    q = check_queries(queries, k, snap.dim, snap.name)
    eligible = flt.mask(attributes()) if flt is not None else None
    n_dead = int(deleted.sum())
    if n_dead:
        eligible = ~deleted if eligible is None else eligible & ~deleted
    scores, rows, plan = filtered_search(snap.index, snap.vectors, q, k, eligible, params)
    job_ids = np.where(rows >= 0, snap.job_ids[np.maximum(rows, 0)], -1)

    alive = delta.alive
    if flt is not None and alive.any():
        pos = np.flatnonzero(alive)
        items = delta.items(pos, snap.items).reset_index(drop=True)
        alive = np.zeros_like(alive)
        alive[pos[flt.mask(AttributeTable.from_items(items))]] = True
    n_delta = int(alive.sum())
    if n_delta:
        part = search_delta(delta.ids, delta.vecs, alive, q, k)
        scores, job_ids = merge_topk([(scores, job_ids), part], k)
    # Display rows of the delta hits, read from the same view the search used.
    size = len(alive)
    hit_pos = np.flatnonzero(alive & np.isin(delta.ids[:size], job_ids[job_ids >= 0]))
    info = {**asdict(plan), "deleted_rows": n_dead, "delta_items": n_delta}
    return Hits(scores, job_ids, delta.items(hit_pos, snap.items).reset_index(drop=True), info)
