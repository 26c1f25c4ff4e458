"""Provision a release from a version's artifacts, and change what serves.

``provision`` gathers what model version N's run produced (towers, the member-interest model
it was co-trained with, embeddings, Feast views, the slot ``jobs@<version>`` points at, the
evaluation report), runs the gates (``ebr.release.gates``), writes the immutable record and
registers it as a candidate. Nothing serves it until ``promote`` or an experiment names it.
``promote``, ``rollback`` and ``start_experiment`` re-read each named record (its checksum
verified) and re-check its lineage before the state pointer moves; ``retire`` removes a
retired release's slot unless something still serving names it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ebr.config import GateConfig, Workspace
from ebr.index.build.aliases import read_aliases, resolve_alias
from ebr.index.live.wal import log_dir_for
from ebr.index.query.slot import MANIFEST_FILE
from ebr.io import sha256_file
from ebr.release import state as st
from ebr.release.gates import ReleaseRefused, check_gates, lineage_gate
from ebr.release.record import list_releases, new_release_id, read_record, write_record
from ebr.versions import META_FILE, feature_names, interest_version, read_meta, version_paths

REPORT_FILE = "eval_report.json"


def _evaluation(ws: Workspace, version: str) -> dict[str, Any] | None:
    """The held-out figures of ``version``'s evaluation report, or None without one."""
    path = version_paths(ws, version).eval / REPORT_FILE
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    methods = report["search"]["methods"]
    return {
        "report": str(path.relative_to(ws.root)),
        "report_sha256": sha256_file(path),
        "eval_days": report.get("eval_days"),
        "ebr_recall@100": methods["ebr_ann"]["recall@100"],  # through the served index
        "exact_ebr_recall@100": methods["ebr"]["recall@100"],
        "bm25_recall@100": methods["bm25"]["recall@100"],
        "hybrid_recall@100": methods.get("hybrid", {}).get("recall@100"),
    }


def gather(ws: Workspace, version: str, slot_name: str | None = None) -> dict[str, Any]:
    """What a release of ``version`` would pin (every record field but id, gates, parent,
    created_at and coverage). ``slot_name``: default the slot ``jobs@<version>`` names."""
    paths = version_paths(ws, version)
    meta = read_meta(paths.model)
    iv = interest_version(meta)
    recorded = meta.get("lineage", {}).get("member_interest") or {}
    slot_dir = ws.slots / slot_name if slot_name else resolve_alias(ws.slots, f"jobs@{version}")
    manifest = json.loads((slot_dir / MANIFEST_FILE).read_text())
    names = feature_names(version, iv)
    return {
        "model": {
            "version": version,
            "checksums": meta["checksums"],
            "model_json_sha256": sha256_file(paths.model / META_FILE),
            "model_config": meta["model_config"],
        },
        "member_interest": None
        if iv is None
        else {
            "version": iv,
            "checksums": recorded.get("checksums"),
            "dim": recorded.get("dim"),
        },
        "features": {
            "request_service": names.request_service,
            "item_service": names.item_service,
            "views": list(names.views),
        },
        "embeddings": {
            "jobs_sha256": sha256_file(paths.jobs),
            "members_sha256": sha256_file(paths.members),
        },
        "slot": {
            "name": slot_dir.name,
            "manifest_sha256": sha256_file(slot_dir / MANIFEST_FILE),
            "model_version": manifest["model_version"],
            "item_count": manifest["item_count"],
            "index": manifest["index"],
            "recall_at_10": manifest["recall_at_10"],
            "recall_queries_source": manifest.get(
                "recall_queries_source", "jittered catalogue rows"
            ),
            "tuning": {
                k: manifest["tuning"][k] for k in ("target_recall", "tuned_recall_at_10", "chosen")
            },
        },
        "evaluation": _evaluation(ws, version),
    }


def provision(
    ws: Workspace, version: str, slot_name: str | None = None, gates: GateConfig | None = None
) -> dict[str, Any]:
    """Gate and record a release of ``version`` as a candidate; returns its record.

    Raises:
        ReleaseRefused: a gate failed (the message names each failed gate and by how much);
            nothing is recorded then.
    """
    cfg = gates or GateConfig()
    facts = gather(ws, version, slot_name)
    state = st.read_state(ws)
    live = read_record(ws, state["live"]) if state["live"] else None
    manifest = json.loads((ws.slots / facts["slot"]["name"] / MANIFEST_FILE).read_text())
    verdicts = check_gates(ws, facts, manifest, cfg, live)
    coverage = next(v for v in verdicts if v["gate"] == "coverage")
    doc = {
        "id": new_release_id(version),
        **facts,
        "coverage": {"share_of_active_jobs": coverage["value"], "detail": coverage["detail"]},
        "gates": verdicts,
        "gate_config": {
            "min_coverage": cfg.min_coverage,
            "min_recall_at_10": cfg.min_recall_at_10,
            "quality_margin": cfg.quality_margin,
        },  # fmt: skip
        "parent": state["live"],
        "created_at": datetime.now(UTC).isoformat(),
    }
    write_record(ws, doc)
    st.add_candidate(ws, doc["id"])
    return read_record(ws, doc["id"])


def _still_consistent(ws: Workspace, release_id: str) -> dict[str, Any]:
    """The record of ``release_id`` (checksum verified), its lineage re-checked now: files
    replaced after provisioning (a re-trained interest model under the same version, an
    edited slot) refuse the release instead of serving a mixed one."""
    record = read_record(ws, release_id)
    lineage = lineage_gate(ws, record)
    if not lineage.passed:
        raise ReleaseRefused(record["model"]["version"], [lineage])
    return record


def promote(ws: Workspace, release_id: str) -> dict[str, Any]:
    """Make ``release_id`` live (its record and lineage checked first); returns the event."""
    _still_consistent(ws, release_id)
    return st.promote(ws, release_id)


def rollback(ws: Workspace, to: str | None = None) -> dict[str, Any]:
    """Make the previous live release (or ``to``) live again; returns the event."""
    target = st.rollback_target(st.read_state(ws), to)
    _still_consistent(ws, target)
    return st.rollback(ws, target)


def parse_arm(spec: str) -> tuple[str, str, float]:
    """``"control=rel-v1-...:0.5"`` -> ``("control", "rel-v1-...", 0.5)``."""
    arm, _, rest = spec.partition("=")
    release, _, weight = rest.rpartition(":")
    try:
        return arm, release, float(weight)
    except ValueError:
        raise ValueError(f"an arm looks like control=rel-v1-...:0.5, got {spec!r}") from None


def start_experiment(
    ws: Workspace, name: str, arm_specs: Sequence[tuple[str, str, float]], salt: str | None = None
) -> dict[str, Any]:
    """``state.start_experiment`` after checking every arm's release."""
    for _, release_id, _ in arm_specs:
        _still_consistent(ws, release_id)
    return st.start_experiment(ws, name, arm_specs, salt)


def retire(ws: Workspace, release_id: str, delete_slot: bool = True) -> dict[str, Any]:
    """Retire ``release_id`` (neither live nor an arm); with ``delete_slot`` remove its slot
    (and live log) unless a release that is not retired, or a slot alias, still names it.
    Embedding tables and Feast views stay (other releases of the version may read them)."""
    event = st.retire(ws, release_id)
    removed, kept_for = remove_unused_slot(ws, release_id) if delete_slot else (False, [])
    slot = read_record(ws, release_id)["slot"]["name"]
    return {**event, "slot": slot, "slot_removed": removed, "kept_for": kept_for}


def remove_unused_slot(ws: Workspace, release_id: str) -> tuple[bool, list[str]]:
    """Remove the slot (and live log) of retired ``release_id`` unless a release that is not
    retired, or a slot alias, still names it; -> (removed, what still names it)."""
    state = st.read_state(ws)
    if state["releases"].get(release_id, {}).get("state") != "retired":
        raise ValueError(f"release {release_id} is not retired; its slot may still serve")
    slot = read_record(ws, release_id)["slot"]["name"]
    named_by = [
        rid for rid in list_releases(ws)
        if rid != release_id and state["releases"].get(rid, {}).get("state") != "retired"
        and read_record(ws, rid)["slot"]["name"] == slot
    ]  # fmt: skip
    aliases = [a for a, target in read_aliases(ws.slots).items() if target == slot]
    if named_by or aliases:
        return False, named_by + aliases
    shutil.rmtree(ws.slots / slot, ignore_errors=True)
    shutil.rmtree(log_dir_for(ws.slots / slot), ignore_errors=True)
    return True, []
