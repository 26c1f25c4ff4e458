"""Gates a release must pass before it may serve; a refusal names the gate and by how much.

- ``recall``: the slot's tuned recall@10 (the build's recall gate) >= the floor
  (``GateConfig.min_recall_at_10``, or the slot's own ``target_recall``);
- ``coverage``: the share of active jobs (``ebr.stream.catalog.current_jobs``) the slot serves
  >= ``GateConfig.min_coverage`` (1.0: every active job), and no job the catalogue has closed
  among those it serves: the slot serves its open rows (``Slot.open_rows``), and a slot built
  from the catalogue holds exactly the open jobs (``ebr.release.slots``);
- ``lineage``: every hop names the release's versions: the tower files match ``model.json``'s
  checksums, the member-interest model on disk is the one the towers were co-trained with
  (``ebr.versions.check_lineage``), the job embeddings hold only this version's rows,
  the slot was built for this version and still matches its manifest, and the Feast repo
  serves this version with that interest version;
- ``quality`` (when ``GateConfig.quality_margin`` is set): held-out EBR recall@100 through the
  served index >= the live release's minus the margin;
- ``ranker`` (a release that pins one, ``ebr.release.ranking``): its held-out NDCG@10 >=
  ``GateConfig.min_ranker_ndcg_ratio`` x the retrieval order's; its file is the one pinned
  (lineage checks that again at promote, rollback and experiment start).

Each gate returns a ``Gate`` (passed, value, threshold, detail); ``check_gates`` raises
``ReleaseRefused`` listing every failed one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from ebr.config import GateConfig, Workspace
from ebr.index.query.slot import MANIFEST_FILE
from ebr.io import sha256_file
from ebr.release.ranking import ranker_faults, ranker_verdict
from ebr.release.record import Release
from ebr.release.slots import open_jobs
from ebr.stream.catalog import current_jobs
from ebr.versions import FEATURE_VERSIONS_FILE, feature_versions, read_meta

MISSING_SHOWN = 5  # example ids a refusal names


@dataclass(frozen=True)
class Gate:
    """One gate's verdict (JSON-able with ``asdict``)."""

    gate: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str


class ReleaseRefused(ValueError):
    """A release failed one or more gates; ``gates`` holds every verdict."""

    def __init__(self, version: str, gates: list[Gate]) -> None:
        failed = [g for g in gates if not g.passed]
        lines = "; ".join(f"{g.gate} gate: {g.detail}" for g in failed)
        super().__init__(f"release of {version} refused by {len(failed)} gate(s): {lines}")
        self.gates = gates


def recall_gate(slot: dict[str, Any], cfg: GateConfig) -> Gate:
    """The slot's tuned recall@10 (``slot``: its manifest) against the floor."""
    tuning = slot.get("tuning", {})
    floor = cfg.min_recall_at_10 or float(tuning.get("target_recall", 0.0))
    value = tuning.get("tuned_recall_at_10")
    if value is None:
        return Gate("recall", False, None, floor, "the slot manifest records no tuned recall")
    ok = value >= floor
    how = "reaches" if ok else f"is {floor - value:.4f} short of"
    return Gate("recall", ok, value, floor, f"tuned recall@10 {value:.4f} {how} {floor:.4f}")


def coverage_gate(ws: Workspace, slot_dir: Path, cfg: GateConfig) -> Gate:
    """The share of active jobs in the catalogue (``data/jobs.parquet`` with the streamed
    changes of the last compaction: ``ebr.stream.catalog``) that the slot serves (its rows
    whose ``active`` is true: a search never returns the others), and whether it serves a job
    the catalogue has closed (refused: closed jobs are never shown)."""
    jobs = current_jobs(ws, ["job_id", "active"])
    is_open = open_jobs(jobs)
    active, closed = jobs.loc[is_open, "job_id"], jobs.loc[~is_open, "job_id"]
    path = slot_dir / "items.parquet"
    columns = [c for c in ("job_id", "active") if c in pq.read_schema(path).names]
    items = pd.read_parquet(path, columns=columns)
    served = items.loc[open_jobs(items), "job_id"] if "active" in columns else items["job_id"]
    missing, stale = active[~active.isin(served)], served[served.isin(closed)]
    share = 1.0 if not len(active) else 1.0 - len(missing) / len(active)
    ok = share >= cfg.min_coverage and not len(stale)
    detail = f"{share:.4f} of {len(active)} active jobs embedded"
    if len(missing):
        shown = missing.head(MISSING_SHOWN).tolist()
        detail += f" ({len(missing)} missing, e.g. {shown})"
    detail += f"; the slot serves {len(served)} jobs"
    if len(stale):
        shown = stale.head(MISSING_SHOWN).tolist()
        detail += f", {len(stale)} of them closed in the catalogue (e.g. {shown})"
    if share < cfg.min_coverage:
        detail += f", below the floor {cfg.min_coverage:.4f} by {cfg.min_coverage - share:.4f}"
    return Gate("coverage", ok, share, cfg.min_coverage, detail)


def _lineage_faults(ws: Workspace, release: Release) -> list[str]:
    """What breaks the chain model -> interest -> embeddings -> slot -> Feast (empty: none)."""
    from ebr.versions import LineageError, check_lineage

    version, paths, faults = release.version, release.paths, []
    meta = read_meta(paths.model)
    if meta.get("version") != version:
        faults.append(f"{paths.model}/model.json says version {meta.get('version')!r}")
    for name, digest in meta.get("checksums", {}).items():
        if sha256_file(paths.model / name) != digest:
            faults.append(f"{paths.model / name} does not match model.json's checksum")
    if meta.get("checksums") != dict(release.model.checksums):
        faults.append("the tower checksums differ from the ones gathered for the release")
    if sha256_file(paths.model / "model.json") != release.model.model_json_sha256:
        faults.append(f"{paths.model}/model.json changed since the release was gathered")
    iv = release.interest_version
    try:
        got = check_lineage(meta, paths.interest_model)
        if got != iv:
            faults.append(f"model {version} was co-trained with member interest {got}, not {iv}")
    except LineageError as err:
        faults.append(str(err))
    rows = pd.read_parquet(paths.jobs, columns=["model_version"])["model_version"].unique()
    if set(rows) != {version}:
        faults.append(f"{paths.jobs} holds model versions {sorted(map(str, rows))}")
    slot = release.slot
    if slot.model_version != version:
        faults.append(f"slot {slot.name} was built for {slot.model_version}")
    if sha256_file(paths.slot / MANIFEST_FILE) != slot.manifest_sha256:
        faults.append(f"slot {slot.name}'s manifest changed since it was gathered")
    faults += _feast_faults(ws, version, iv)
    return faults + ranker_faults(release)


def _feast_faults(ws: Workspace, version: str, iv: str | None) -> list[str]:
    path = ws.feature_repo / FEATURE_VERSIONS_FILE
    try:
        listed = feature_versions(path)
    except FileNotFoundError:
        return [f"{path} is missing: Feast serves no version (publish the features)"]
    except ValueError as err:
        return [str(err)]
    if version not in listed:
        return [f"Feast does not serve {version} (not in {path}); publish its features"]
    if listed[version] != iv:
        return [f"Feast serves {version} with member interest {listed[version]}, not {iv}"]
    return []


def lineage_gate(ws: Workspace, release: Release) -> Gate:
    """Every hop of ``release`` (recorded, or gathered by ``provision``) names its versions."""
    faults = _lineage_faults(ws, release)
    detail = (
        "model, interest, embeddings, slot and Feast agree" if not faults else "; ".join(faults)
    )
    return Gate("lineage", not faults, float(len(faults)), 0.0, detail)


def quality_gate(
    evaluation: Mapping[str, Any] | None, live: Release | None, cfg: GateConfig
) -> Gate | None:
    """Held-out recall@100 of the release (``evaluation``: its record's) against the live
    release's record minus ``cfg.quality_margin``; None when the gate is off."""
    if cfg.quality_margin is None:
        return None
    if evaluation is None:
        return Gate("quality", False, None, None, "no evaluation report for this version")
    value = float(evaluation["ebr_recall@100"])
    if live is None or live.evaluation is None:
        return Gate("quality", True, value, None, f"recall@100 {value:.4f}; nothing live yet")
    floor = float(live.evaluation["ebr_recall@100"]) - cfg.quality_margin
    ok = value >= floor
    how = "reaches" if ok else f"is {floor - value:.4f} below"
    return Gate(
        "quality", ok, value, floor,
        f"held-out recall@100 {value:.4f} {how} live {live.id}'s minus {cfg.quality_margin}",
    )  # fmt: skip


def ranker_gate(release: Release, cfg: GateConfig) -> Gate | None:
    """The release's ranker (``ebr.release.ranking``) against ``min_ranker_ndcg_ratio``;
    None for a release without one."""
    verdict = ranker_verdict(release, cfg.min_ranker_ndcg_ratio)
    if verdict is None:
        return None
    passed, value, detail = verdict
    return Gate("ranker", passed, value, cfg.min_ranker_ndcg_ratio, detail)


def check_gates(
    ws: Workspace,
    release: Release,
    slot_manifest: dict[str, Any],
    cfg: GateConfig,
    live: Release | None,
) -> list[dict[str, Any]]:
    """Run every gate on ``release`` (gathered, not yet recorded); their verdicts (JSON-able)
    or ``ReleaseRefused`` naming the failed."""
    gates = [
        recall_gate(slot_manifest, cfg),
        coverage_gate(ws, release.paths.slot, cfg),
        lineage_gate(ws, release),
    ]
    for extra in (quality_gate(release.evaluation, live, cfg), ranker_gate(release, cfg)):
        if extra is not None:
            gates.append(extra)
    if not all(g.passed for g in gates):
        raise ReleaseRefused(release.version, gates)
    return [asdict(g) for g in gates]
