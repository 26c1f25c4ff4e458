"""Compaction of a serving release: its slot's log folded into a new snapshot, released
through the gates, put where the old release served.

A streaming job appends every change to the slots of the serving releases; their logs grow
and each search merges a bigger delta. ``compact_release`` folds the snapshot and its log
(``ebr.index.live.handover.fold_into_slot``, read-only: the streaming job keeps writing
meanwhile) into a new immutable slot of the same model version, gates it as a new release
(recall, coverage of the catalogue with the streamed changes, lineage; ``ebr.release.gates``)
and replaces the old release in each of its roles (live, experiment arms; ``state.replace``).
The old release is retired, its slot and log kept: the streaming job copies the records that
reached the old log after the compaction read it into the new one before writing there
(``ebr.index.live.handover.take_over``, called by ``pipelines.streaming.sinks``), and a
rollback goes to the release live before it.

All or nothing: the state, the old release's record and ``slots/aliases.json`` are read
first; the new release's record, the aliases (one write) and the state (one write, the new
release recorded and put in place together) follow, and a failure at any step undoes the
ones before it and removes the new slot: the old release keeps serving, nothing else changed.

    ebr slot compact --workspace var/demo [--release rel-v1-...]
"""

from __future__ import annotations

from typing import Any

from ebr.config import GateConfig, IndexConfig, Workspace
from ebr.index.build.aliases import read_aliases, restore, retarget
from ebr.index.build.writer import slot_name_for
from ebr.index.live.handover import fold_into_slot
from ebr.index.live.slot import open_live
from ebr.release import state as st
from ebr.release.gates import ReleaseRefused
from ebr.release.provision import prepare, recorded, remove_slot
from ebr.release.record import read_release
from ebr.release.slots import tuning_requests

MIN_LOG_RECORDS = 1  # a log with fewer records is left as it is


def compact_release(
    ws: Workspace,
    release_id: str,
    cfg: IndexConfig | None = None,
    gates: GateConfig | None = None,
    min_records: int = MIN_LOG_RECORDS,
) -> dict[str, Any]:
    """Compact ``release_id``'s slot into a new release that replaces it; returns what was done
    (``compacted`` False with a ``reason`` when its log is shorter than ``min_records`` or the
    gates refused the new slot: the old release keeps serving then)."""
    cfg = cfg or IndexConfig()
    role = st.role(st.read_state(ws), release_id)  # every file it changes, read first
    if role == "retired":
        raise ValueError(f"release {release_id} is retired; there is nothing to compact")
    release = read_release(ws, release_id)
    read_aliases(ws.slots)
    version, old_slot = release.version, release.slot.name
    live = open_live(release.paths.slot, writable=False)
    records = int(live.stats()["lsn"])
    if records < min_records:
        return {"release": release_id, "compacted": False, "log_records": records,
                "reason": f"log holds {records} records (< {min_records})"}  # fmt: skip
    new_slot = slot_name_for(version)
    requests = tuning_requests(ws, version, cfg) if cfg.tune_on == "requests" else None
    fold_into_slot(live, ws.slots, new_slot, cfg, requests)
    try:
        doc = prepare(ws, version, new_slot, gates)
        with recorded(ws, doc):
            moved = retarget(ws.slots, old_slot, new_slot)  # jobs@<version> follows the data
            try:
                event = st.replace(ws, release_id, doc["id"])
            except BaseException:
                restore(ws.slots, moved, old_slot, new_slot)
                raise
    except BaseException as err:
        remove_slot(ws, new_slot)  # nothing names it: the old release keeps serving
        if not isinstance(err, ReleaseRefused):
            raise
        return {"release": release_id, "compacted": False, "log_records": records,
                "reason": str(err)}  # fmt: skip
    return {"release": release_id, "compacted": True, "log_records": records,
            "new_release": doc["id"], "new_slot": new_slot, "roles": event["roles"],
            "gates": doc["gates"]}  # fmt: skip


def compact_serving(
    ws: Workspace,
    cfg: IndexConfig | None = None,
    gates: GateConfig | None = None,
    min_records: int = MIN_LOG_RECORDS,
) -> list[dict[str, Any]]:
    """``compact_release`` for every release requests are routed to (live and the arms)."""
    state = st.read_state(ws)
    return [compact_release(ws, rid, cfg, gates, min_records) for rid in st.serving_ids(state)]
