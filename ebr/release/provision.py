"""Provision a release from a version's artifacts, and change what serves.

``provision`` gathers what model version N's run produced (towers, the member-interest model
it was co-trained with, embeddings, Feast views, the slot ``jobs@<version>`` points at, the
evaluation report), runs the gates (``ebr.release.gates``), writes the immutable record and
registers it as a candidate. Nothing serves it until ``promote`` or an experiment names it.
``promote``, ``rollback`` and ``start_experiment`` re-read each named record (its checksum
verified) and re-check its lineage before the state pointer moves; ``retire`` removes a
retired release's slot unless something still serving names it.

Each operation is all or nothing: it reads and checks everything it depends on (records,
``releases/state.json``, ``slots/aliases.json``) before its one write of the state, and a
failure names the file and leaves the state, the aliases and the releases as they were (a
record written for a candidate the state refused is removed again). Only what follows the
committed write can fail after it: removing a retired slot's files, which ``retire`` run
again finishes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from ebr.config import GateConfig, Workspace
from ebr.index.build.aliases import read_aliases, resolve_alias
from ebr.index.live.wal import log_dir_for
from ebr.index.query.slot import MANIFEST_FILE
from ebr.io import sha256_file
from ebr.release import state as st
from ebr.release.gates import ReleaseRefused, check_gates, lineage_gate
from ebr.release.ranking import RankingSpec, ranking_doc
from ebr.release.record import (
    Release,
    list_releases,
    new_release_id,
    read_release,
    record_dir,
    write_record,
)
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


def prepare(
    ws: Workspace,
    version: str,
    slot_name: str | None = None,
    gates: GateConfig | None = None,
    ranking: RankingSpec | None = None,
) -> dict[str, Any]:
    """The gated record of a new release of ``version`` (not written): what ``provision``
    records. Reads the state (the live release is the parent and the quality baseline).
    ``ranking``: what follows retrieval (``ebr.release.ranking``; default retrieval order).

    Raises:
        ReleaseRefused: a gate failed (the message names each failed gate and by how much).
    """
    cfg = gates or GateConfig()
    state = st.read_state(ws)  # first: an unreadable state refuses before the slow gates
    doc = {
        "id": new_release_id(version),
        **gather(ws, version, slot_name),
        "ranking": ranking_doc(ws, version, ranking or RankingSpec()),
        "parent": state["live"],
        "created_at": datetime.now(UTC).isoformat(),
    }
    gathered = Release.from_doc(ws, doc)  # what the gates check, before they have run
    live = read_release(ws, state["live"]) if state["live"] else None
    manifest = json.loads((gathered.paths.slot / MANIFEST_FILE).read_text())
    verdicts = check_gates(ws, gathered, manifest, cfg, live)
    coverage = next(v for v in verdicts if v["gate"] == "coverage")
    return {
        **doc,
        "coverage": {"share_of_active_jobs": coverage["value"], "detail": coverage["detail"]},
        "gates": verdicts,
        "gate_config": {
            "min_coverage": cfg.min_coverage,
            "min_recall_at_10": cfg.min_recall_at_10,
            "quality_margin": cfg.quality_margin,
            "min_ranker_ndcg_ratio": cfg.min_ranker_ndcg_ratio,
        },  # fmt: skip
    }


def provision(
    ws: Workspace,
    version: str,
    slot_name: str | None = None,
    gates: GateConfig | None = None,
    ranking: RankingSpec | None = None,
) -> Release:
    """Gate and record a release of ``version`` as a candidate; returns it (as recorded).
    ``ranking``: its ranker and crowding defaults (``ebr.release.ranking``).

    Raises:
        ReleaseRefused: a gate failed (the message names each failed gate and by how much);
            nothing is recorded then, nor when recording the candidate in the state fails.
    """
    doc = prepare(ws, version, slot_name, gates, ranking)
    with recorded(ws, doc):
        st.add_candidate(ws, doc["id"])
    return read_release(ws, doc["id"])


@contextlib.contextmanager
def recorded(ws: Workspace, doc: dict[str, Any]) -> Iterator[None]:
    """Write ``doc``'s record for the ``with`` body (which names it in the state); if the body
    raises, remove the record again: no release is left that the state does not name."""
    write_record(ws, doc)
    try:
        yield
    except BaseException:
        shutil.rmtree(record_dir(ws, doc["id"]))
        raise


def _still_consistent(ws: Workspace, release_id: str) -> Release:
    """``release_id`` (its record's checksum verified), its lineage re-checked now: files
    replaced after provisioning (a re-trained interest model under the same version, an
    edited slot) refuse the release instead of serving a mixed one."""
    release = read_release(ws, release_id)
    lineage = lineage_gate(ws, release)
    if not lineage.passed:
        raise ReleaseRefused(release.version, [lineage])
    return release


def promote(ws: Workspace, release_id: str) -> dict[str, Any]:
    """Make ``release_id`` live (its record and lineage checked first); returns the event."""
    _still_consistent(ws, release_id)
    return st.promote(ws, release_id)


def rollback(ws: Workspace, to: str | None = None) -> dict[str, Any]:
    """Make the previous live release (or ``to``) live again, its record and lineage checked
    under the state lock first (``state.rollback`` says how the live history moves); returns
    the event."""
    return st.rollback(ws, to, verify=lambda target: _still_consistent(ws, target))


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
    Embedding tables and Feast views stay (other releases of the version may read them).

    Its record, every other record and the aliases are read before the state changes: if one
    is unreadable the release stays as it was. The slot's files go after the state is
    written; if that fails, the release is retired and ``retire`` again removes them."""
    plan: dict[str, Any] = {}

    def check(state: dict[str, Any]) -> None:  # under the state lock, before the write
        slot = read_release(ws, release_id).slot.name
        kept_for = _named_by(ws, state, release_id, slot) if delete_slot else []
        plan.update(slot=slot, kept_for=kept_for)

    event = st.retire(ws, release_id, check)
    removed = delete_slot and not plan["kept_for"]
    if removed:
        remove_slot(ws, plan["slot"])
    return {**event, "slot": plan["slot"], "slot_removed": removed, "kept_for": plan["kept_for"]}


def _named_by(ws: Workspace, state: dict[str, Any], release_id: str, slot: str) -> list[str]:
    """What still names ``slot`` besides ``release_id``: releases that are not retired (their
    records read and checked: one the state names whose record is missing refuses, as it may
    name the slot) and slot aliases."""
    known = dict.fromkeys([*list_releases(ws), *state["releases"]])
    named_by = [
        rid for rid in known
        if rid != release_id and state["releases"].get(rid, {}).get("state") != "retired"
        and read_release(ws, rid).slot.name == slot
    ]  # fmt: skip
    return named_by + [a for a, target in read_aliases(ws.slots).items() if target == slot]


def remove_slot(ws: Workspace, slot: str) -> None:
    """Remove ``slot`` and its live log: each renamed out of the slots' names first (one
    atomic step, after which nothing can open it), then deleted."""
    doomed = []
    for path in (ws.slots / slot, log_dir_for(ws.slots / slot)):
        if path.exists():
            trash = path.with_name(f".{path.name}.removed-{uuid.uuid4().hex[:8]}")
            os.rename(path, trash)
            doomed.append(trash)
    for trash in doomed:
        shutil.rmtree(trash)


def remove_unused_slot(ws: Workspace, release_id: str) -> tuple[bool, list[str]]:
    """Remove the slot (and live log) of retired ``release_id`` unless a release that is not
    retired, or a slot alias, still names it; -> (removed, what still names it)."""
    state = st.read_state(ws)
    if state["releases"].get(release_id, {}).get("state") != "retired":
        raise ValueError(f"release {release_id} is not retired; its slot may still serve")
    slot = read_release(ws, release_id).slot.name
    named_by = _named_by(ws, state, release_id, slot)
    if named_by:
        return False, named_by
    remove_slot(ws, slot)
    return True, []
