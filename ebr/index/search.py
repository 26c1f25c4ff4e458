"""One search entry point over a live slot: filters + planner + tombstones + upserted delta.

    snapshot rows:  eligible = filter(attributes) AND NOT (tombstoned or superseded)
                    -> planner.filtered_search (exact subset scan or ANN with an id selector)
    delta rows:     records upserted since the snapshot, filtered the same way, scanned exactly
    merge:          top-k by score; every result passes the filter and is live

So the guarantees of the planner (no ineligible result; k results whenever k are eligible)
hold for the live view too: the delta is searched exhaustively.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ebr.index.attributes import AttributeTable
from ebr.index.filters import Filter
from ebr.index.live import LiveSlot, open_live
from ebr.index.planner import PlannerParams, filtered_search
from ebr.index.slot import check_queries


@dataclass(frozen=True)
class Hits:
    """Results of ``search_live``: scores float32 [q, k] (-inf pads), job_ids int64 [q, k]
    (-1 pads), the delta's display rows (for ids not in the snapshot) and the plan."""

    scores: np.ndarray
    job_ids: np.ndarray
    delta_items: pd.DataFrame
    plan: dict[str, Any]


def search_live(
    live: LiveSlot,
    attrs: AttributeTable,
    queries: np.ndarray,
    k: int,
    flt: Filter | None = None,
    params: PlannerParams | None = None,
) -> Hits:
    """Top-k live jobs passing ``flt`` for each query ([q, d] unit vectors of the slot's
    model version). ``attrs`` must be ``AttributeTable.from_items(live.snapshot.items)``."""
    snap = live.snapshot
    q = check_queries(queries, k, snap.dim, snap.name)
    if attrs.n != len(snap.items):
        raise ValueError(f"attribute table has {attrs.n} rows, slot {snap.name} {len(snap.items)}")
    dead = live.deleted_rows()
    eligible = flt.mask(attrs) if flt is not None else None
    if dead.any():
        eligible = ~dead if eligible is None else eligible & ~dead
    scores, rows, plan = filtered_search(snap.index, snap.vectors, q, k, eligible, params)
    job_ids = np.where(rows >= 0, snap.job_ids[np.maximum(rows, 0)], -1)

    d_ids, d_vecs, d_items = live.delta()
    if flt is not None and len(d_ids):
        keep = flt.mask(AttributeTable.from_items(d_items.reset_index(drop=True)))
        d_ids, d_vecs, d_items = d_ids[keep], d_vecs[keep], d_items[keep]
    if len(d_ids):
        d_scores = q @ d_vecs.T  # the delta is small between compactions: exact is cheap
        scores = np.concatenate([scores, d_scores.astype(np.float32)], axis=1)
        job_ids = np.concatenate([job_ids, np.broadcast_to(d_ids, d_scores.shape)], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(scores, order, axis=1)
        job_ids = np.take_along_axis(job_ids, order, axis=1)
    info = {**asdict(plan), "deleted_rows": int(dead.sum()), "delta_items": int(len(d_ids))}
    return Hits(scores, job_ids, d_items.reset_index(drop=True), info)


def served_search(slot_path: Path) -> Callable[[np.ndarray, int], np.ndarray]:
    """(request vectors [q, d], k) -> job ids [q, k] through the path the serving Retriever
    takes (the live slot opened read-only, planner, tombstones, delta): what an offline
    evaluation of "the served index" must call. ``Slot.search`` alone probes a fixed number of
    IVF cells and can return fewer than k jobs; the planner widens the probe until it has k.
    """
    live = open_live(slot_path, writable=False)
    attrs = AttributeTable.from_items(live.snapshot.items)
    return lambda q, k: search_live(live, attrs, q, k).job_ids
