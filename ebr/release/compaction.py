"""Compaction of a serving release: its slot's log folded into a new snapshot, released
through the gates, put where the old release served.

A streaming job appends every change to the slots of the serving releases; their logs grow
and each search merges a bigger delta. ``compact_release`` folds the snapshot and its log
(``ebr.index.live.slot.compact``, read-only: the streaming job keeps writing meanwhile) into
a new immutable slot of the same model version, gates it as a new release (recall, coverage of
the catalogue with the streamed changes, lineage; ``ebr.release.gates``) and replaces the old
release in each of its roles (live, experiment arms; ``state.replace``). The old release is
retired, its slot and log kept: the streaming job copies the records that reached the old log
after the compaction read it into the new one before writing there (``pipelines.stream_sinks``),
and a rollback goes to the release live before it.

    python -m ebr.release compact --workspace var/demo [--release rel-v1-...]
"""

from __future__ import annotations

import shutil
from typing import Any

from ebr.config import GateConfig, IndexConfig, Workspace
from ebr.index.build.aliases import read_aliases, set_alias
from ebr.index.build.writer import slot_name_for
from ebr.index.live.slot import compact, open_live
from ebr.index.live.wal import log_dir_for
from ebr.release import state as st
from ebr.release.gates import ReleaseRefused
from ebr.release.provision import provision
from ebr.release.record import read_record
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
    record = read_record(ws, release_id)
    version, old_slot = record["model"]["version"], record["slot"]["name"]
    live = open_live(ws.slots / old_slot, writable=False)
    records = int(live.stats()["lsn"])
    if records < min_records:
        return {"release": release_id, "compacted": False, "log_records": records,
                "reason": f"log holds {records} records (< {min_records})"}  # fmt: skip
    new_slot = slot_name_for(version)
    requests = tuning_requests(ws, version, cfg) if cfg.tune_on == "requests" else None
    compact(live, ws.slots, new_slot, cfg, requests)
    try:
        new = provision(ws, version, new_slot, gates)
    except ReleaseRefused as refused:
        # Nothing names the new slot: remove it; the old release keeps serving.
        shutil.rmtree(ws.slots / new_slot, ignore_errors=True)
        shutil.rmtree(log_dir_for(ws.slots / new_slot), ignore_errors=True)
        return {"release": release_id, "compacted": False, "log_records": records,
                "reason": str(refused)}  # fmt: skip
    for alias, target in read_aliases(ws.slots).items():
        if target == old_slot:  # jobs@<version> and the like follow the data
            set_alias(ws.slots, alias, new_slot)
    event = st.replace(ws, release_id, new["id"])
    return {"release": release_id, "compacted": True, "log_records": records,
            "new_release": new["id"], "new_slot": new_slot, "roles": event["roles"],
            "gates": new["gates"]}  # fmt: skip


def compact_serving(
    ws: Workspace,
    cfg: IndexConfig | None = None,
    gates: GateConfig | None = None,
    min_records: int = MIN_LOG_RECORDS,
) -> list[dict[str, Any]]:
    """``compact_release`` for every release requests are routed to (live and the arms)."""
    state = st.read_state(ws)
    return [compact_release(ws, rid, cfg, gates, min_records) for rid in st.serving_ids(state)]
