"""Log hand-over between a live slot and the slot compacted from it, in one place.

A compaction (``fold_into_slot``) folds a live slot (snapshot rows not deleted + delta) into a new
immutable slot while searches and appends go on; the appends that land during the build are
copied into the new slot's log and the old slot is sealed, so every acknowledged write is in
the new slot. The new manifest's ``lineage`` names the old slot and the log position it read
(``through_lsn``).

A writer that opens the new slot while the old one still receives writes (the streaming job
wrote to the old slot until the release that names the new one replaced it) calls
``take_over``: the records that reached the old log after the compaction read it are copied in
(``handover_start`` says where that starts the first time). The writer keeps its own record of
how far it got (``pipelines.streaming.state.Applied``), so a restart copies nothing twice.

    ebr slot compact --workspace var/demo             # compaction, gated as a release
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ebr.config import IndexConfig
from ebr.index.build.writer import write_slot
from ebr.index.live.slot import LiveSlot
from ebr.index.live.wal import UPSERT, Record, log_dir_for, replay

log = logging.getLogger(__name__)


def fold_into_slot(
    live: LiveSlot,
    slots_dir: Path,
    new_name: str,
    cfg: IndexConfig,
    tuning_queries: np.ndarray | None = None,
) -> Path:
    """Fold ``live`` into the new immutable slot ``new_name`` (its recall gate tuned on
    ``tuning_queries``, request embeddings, as ``write_slot`` says) and hand its log over.

    Searches and appends continue while the index builds. Appends that land meanwhile are
    copied into the new slot's log (which otherwise starts empty) and ``live`` is sealed, so
    every acknowledged write is in the new slot. The old slot and its log stay, for rollback.

    Returns:
        The new slot directory; its manifest's ``lineage`` names the old slot and log position.
    """
    new_log = log_dir_for(Path(slots_dir) / new_name)
    if new_log.exists():
        raise FileExistsError(f"log {new_log} already exists; choose a fresh slot name")
    folded = live.contents()
    snap = live.snapshot
    lineage: dict[str, object] = {"compacted_from": snap.name, "through_lsn": folded.lsn}
    if folded.log_problems:  # the new log starts clean: keep the record of what was lost
        lineage["log_problems"] = list(folded.log_problems)
    path = write_slot(
        slots_dir, new_name, folded.vectors, folded.items, snap.model_version, cfg, lineage,
        tuning_queries,
    )  # fmt: skip
    live.seal_into(new_log, folded.lsn, new_name)
    return path


def compacted_from(live: LiveSlot) -> tuple[str, Path] | None:
    """(old slot name, its log folder) when ``live`` was compacted from a slot whose log is
    still there; None otherwise (nothing to take over)."""
    lineage = live.snapshot.manifest.get("lineage") or {}
    old = lineage.get("compacted_from")
    if not old:
        return None
    old_log = log_dir_for(live.snapshot.path.parent / str(old))
    return (str(old), old_log) if old_log.is_dir() else None


def handover_start(live: LiveSlot) -> int:
    """The old log position a first ``take_over`` starts after: what the compaction read
    (``through_lsn``) plus the records it copied into the new log itself."""
    lineage = live.snapshot.manifest.get("lineage") or {}
    return int(lineage["through_lsn"]) + int(live.stats()["lsn"])


def take_over(live: LiveSlot, old_log: Path, after_lsn: int) -> tuple[int, int]:
    """Apply to ``live`` the old log's records after ``after_lsn`` (upserts and tombstones, in
    order); -> (the old log's last lsn, or ``after_lsn`` when none came since; records
    copied)."""
    tail: list[Record] = []
    end = replay(old_log, tail.append, after_lsn=after_lsn).last_lsn
    for rec in tail:
        if rec.kind == UPSERT:
            assert rec.items is not None and rec.vectors is not None, "upserts carry both"
            live.upsert(rec.items.to_pandas(), rec.vectors)
        else:
            live.delete(rec.job_ids)
    return max(end, after_lsn), len(tail)
