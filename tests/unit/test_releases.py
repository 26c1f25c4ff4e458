"""Releases: immutable records, the gates (recall, coverage, lineage, quality), the state
pointer (promote, rollback, experiments, retire) and arm assignment, on small workspaces
whose artifacts are real files with real checksums (the towers are random bytes: nothing here
loads a model)."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.query_overhead import items_for
from ebr.config import GateConfig, IndexConfig, ModelConfig, Workspace
from ebr.index.build.aliases import point, read_aliases
from ebr.index.build.writer import slot_name_for, write_slot
from ebr.io import atomic_write_json, sha256_file
from ebr.release import provision as ops
from ebr.release import state as st
from ebr.release.assign import assign, bucket
from ebr.release.gates import ReleaseRefused, recall_gate
from ebr.release.record import (
    RECORD_FILE,
    Release,
    list_releases,
    read_record,
    read_release,
    record_dir,
)
from ebr.versions import interest_paths, version_paths

N_JOBS, DIM, INTEREST_DIM = 400, 16, 8


def _artifact(
    folder: Path, version: str, cfg: ModelConfig, files: list[str], **meta: object
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng()  # unseeded: a re-made artifact differs, as a re-train does
    for name in files:
        (folder / name).write_bytes(rng.bytes(256))
    checksums = {name: sha256_file(folder / name) for name in files}
    doc = {"version": version, "model_config": asdict(cfg), "checksums": checksums,
           "created_at": datetime.now(UTC).isoformat(), **meta}  # fmt: skip
    atomic_write_json(folder / "model.json", doc)


def make_interest(ws: Workspace, iv: str) -> None:
    cfg = ModelConfig(schema="interest", dim=INTEREST_DIM)
    _artifact(interest_paths(ws, iv).model, iv, cfg, ["request_tower.pt", "item_tower.pt"])


def make_version(ws: Workspace, version: str, iv: str, drop_jobs: int = 0, seed: int = 0) -> str:
    """models/<v> co-trained with interest ``iv``, its embeddings, a flat slot (``jobs@<v>``;
    ``drop_jobs``: leave the last active ones out) and the Feast version list; -> slot name."""
    from ebr.versions import interest_lineage

    paths = version_paths(ws, version)
    lineage = interest_lineage(interest_paths(ws, iv).model)
    cfg = ModelConfig(dim=DIM, interest_dim=INTEREST_DIM)
    _artifact(paths.model, version, cfg, ["request_tower.pt", "item_tower.pt"],
              lineage=lineage, train={"eval_days": 2})  # fmt: skip
    items = items_for(N_JOBS)
    ws.data.mkdir(parents=True, exist_ok=True)
    items[["job_id", "active"]].to_parquet(ws.data / "jobs.parquet")
    vecs = np.random.default_rng(seed).standard_normal((N_JOBS, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    paths.embeddings.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(
        {"job_id": items["job_id"], "embedding": list(vecs), "model_version": version}
    )
    table.to_parquet(paths.jobs)
    table.rename(columns={"job_id": "member_id"}).to_parquet(paths.members)
    keep = np.ones(N_JOBS, dtype=bool)
    if drop_jobs:
        keep[np.flatnonzero(items["active"].to_numpy())[-drop_jobs:]] = False
    name = slot_name_for(version)
    write_slot(ws.slots, name, vecs[keep], items[keep].reset_index(drop=True), version,
               IndexConfig(kind="flat"))  # fmt: skip
    point(ws.slots, name, [f"jobs@{version}"])
    listed_path = ws.feature_repo / "versions.json"
    listed = json.loads(listed_path.read_text())["versions"] if listed_path.is_file() else []
    listed = [e for e in listed if e["version"] != version] + [
        {"version": version, "interest_version": iv}
    ]
    atomic_write_json(listed_path, {"versions": listed})
    return name


def write_eval(ws: Workspace, version: str, recall: float) -> None:
    methods = {m: {"recall@100": recall} for m in ("ebr", "ebr_ann", "bm25", "hybrid")}
    folder = version_paths(ws, version).eval
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "eval_report.json", {"eval_days": 2, "search": {"methods": methods}})


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    out = Workspace(tmp_path)
    make_interest(out, "v1")
    make_version(out, "v1", "v1")
    return out


# ---- records ----


def test_provision_records_a_checksummed_candidate(ws: Workspace) -> None:
    release = ops.provision(ws, "v1")
    assert release.id.startswith("rel-v1-") and list_releases(ws) == [release.id]
    assert release.interest_version == "v1" and release.parent is None
    assert release.features.request_service == "request_features_v1"
    assert "member_interest_v1" in release.features.views
    assert release.slot.name == read_aliases(ws.slots)["jobs@v1"]
    assert release.paths.slot == ws.slots / release.slot.name
    assert release.paths.model == ws.models / "v1"
    assert release.doc["coverage"]["share_of_active_jobs"] == 1.0
    assert {g["gate"] for g in release.gates} == {"recall", "coverage", "lineage"}
    assert release == read_release(ws, release.id)  # the typed view of what was written
    with pytest.raises(AttributeError):
        release.slot.name = "elsewhere"  # type: ignore[misc]  # frozen
    assert st.role(st.read_state(ws), release.id) == "candidate"
    path = record_dir(ws, release.id) / RECORD_FILE
    doc = json.loads(path.read_text())
    doc["slot"]["name"] = "jobs-v1-elsewhere"  # an edit after the fact
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="does not match its checksum"):
        read_record(ws, release.id)


def test_a_record_missing_a_field_readers_rely_on_is_refused(ws: Workspace) -> None:
    """Each field a reader takes from the typed view, absent or mistyped, refuses with the
    release named (never a KeyError deep in serving)."""
    rid = ops.provision(ws, "v1").id
    doc = {k: v for k, v in read_record(ws, rid).items() if k not in ("checksum", "format_version")}
    breaks = [
        ("slot", {k: v for k, v in doc["slot"].items() if k != "manifest_sha256"}),
        ("model", {**doc["model"], "checksums": None}),
        ("features", {**doc["features"], "views": 7}),
        ("member_interest", {"dim": 32}),
    ]
    for field_name, value in breaks:
        with pytest.raises(ValueError, match=rid):
            Release.from_doc(ws, {**doc, field_name: value})


# ---- gates: each kind of fault refuses, naming the gate and by how much ----


def test_coverage_gate_names_the_missing_share(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    make_interest(ws, "v1")
    make_version(ws, "v1", "v1", drop_jobs=3)
    with pytest.raises(
        ReleaseRefused, match=r"coverage gate: 0\.99\d+ of \d+ active jobs embedded \(3 missing"
    ) as err:
        ops.provision(ws, "v1")
    assert "below the floor 1.0000 by 0.0" in str(err.value)
    assert not list_releases(ws) and not st.read_state(ws)["releases"]  # nothing recorded
    assert (
        ops.provision(ws, "v1", gates=GateConfig(min_coverage=0.99)).doc["coverage"][
            "share_of_active_jobs"
        ]
        < 1
    )


def test_recall_gate_names_the_shortfall() -> None:
    manifest = {"tuning": {"target_recall": 0.95, "tuned_recall_at_10": 0.9}}
    gate = recall_gate(manifest, GateConfig())
    assert not gate.passed and "0.0500 short of 0.9500" in gate.detail
    assert recall_gate(manifest, GateConfig(min_recall_at_10=0.85)).passed
    assert not recall_gate({"tuning": {}}, GateConfig()).passed


@pytest.mark.parametrize(
    "fault, message",
    [
        ("retrained_interest", "co-trained with member-interest v1"),
        ("feast_other_interest", "Feast serves v1 with member interest v2, not v1"),
        ("feast_missing", "Feast does not serve v1"),
        ("mixed_embeddings", "holds model versions"),
        ("tower_replaced", "does not match model.json's checksum"),
    ],
)
def test_lineage_faults_refuse_provision_and_promotion(
    ws: Workspace, fault: str, message: str
) -> None:
    """Any broken hop (the interest model re-trained under the same version, Feast pairing
    the version with another interest version or not serving it, another version's rows in
    the embeddings, a tower file swapped) refuses a new release and the promotion of one
    recorded before the fault."""
    before = ops.provision(ws, "v1").id
    make_interest(ws, "v2")
    paths, listed_path = version_paths(ws, "v1"), ws.feature_repo / "versions.json"
    if fault == "retrained_interest":
        make_interest(ws, "v1")  # same version, new files: not the co-trained model
    elif fault == "feast_other_interest":
        atomic_write_json(listed_path, {"versions": [{"version": "v1", "interest_version": "v2"}]})
    elif fault == "feast_missing":
        atomic_write_json(listed_path, {"versions": [{"version": "v9", "interest_version": None}]})
    elif fault == "mixed_embeddings":
        table = pd.read_parquet(paths.jobs)
        table.loc[0, "model_version"] = "v2"
        table.to_parquet(paths.jobs)
    else:
        (paths.model / "item_tower.pt").write_bytes(b"another tower")
    with pytest.raises(ReleaseRefused, match=f"lineage gate: .*{message}"):
        ops.provision(ws, "v1")
    with pytest.raises(ReleaseRefused, match="lineage gate"):
        ops.promote(ws, before)
    assert st.read_state(ws)["live"] is None


def test_quality_gate_compares_with_the_live_release(ws: Workspace) -> None:
    write_eval(ws, "v1", 0.70)
    live = ops.provision(ws, "v1").id
    ops.promote(ws, live)
    make_version(ws, "v2", "v1", seed=1)
    write_eval(ws, "v2", 0.60)
    with pytest.raises(
        ReleaseRefused, match=r"quality gate: held-out recall@100 0\.6000 is 0\.0500 below"
    ):
        ops.provision(ws, "v2", gates=GateConfig(quality_margin=0.05))
    release = ops.provision(ws, "v2", gates=GateConfig(quality_margin=0.2))
    assert release.parent == live and release.evaluation is not None
    assert release.evaluation["ebr_recall@100"] == 0.60
    assert ops.provision(ws, "v2").gates[-1]["gate"] == "lineage"  # no margin: no gate


# ---- the state pointer ----


def test_promote_rollback_experiment_retire(ws: Workspace) -> None:
    r1 = ops.provision(ws, "v1").id
    make_version(ws, "v2", "v1", seed=1)
    r2 = ops.provision(ws, "v2").id
    assert ops.promote(ws, r1)["previous"] is None
    assert ops.promote(ws, r2)["previous"] == r1
    state = st.read_state(ws)
    assert (state["live"], st.role(state, r1), st.role(state, r2)) == (r2, "standby", "live")
    assert ops.rollback(ws)["release"] == r1 and st.read_state(ws)["live"] == r1
    with pytest.raises(ValueError, match="nothing to roll back to"):
        ops.rollback(ws)
    ops.start_experiment(ws, "v2-vs-v1", [("control", r1, 0.5), ("treatment", r2, 0.5)])
    state = st.read_state(ws)
    assert st.serving_ids(state) == [r1, r2] and st.role(state, r2) == "arm:treatment"
    with pytest.raises(ValueError, match="is running; stop it first"):
        ops.start_experiment(ws, "again", [("a", r1, 0.5), ("b", r2, 0.5)])
    with pytest.raises(ValueError, match="cannot retire"):
        ops.retire(ws, r2)
    st.stop_experiment(ws)
    gone = ops.retire(ws, r2)
    assert gone["slot_removed"] is False and gone["kept_for"] == ["jobs@v2"]  # an alias names it
    with pytest.raises(ValueError, match="retired releases never serve again"):
        ops.promote(ws, r2)
    make_version(ws, "v2", "v1", seed=2)  # a newer v2 slot: jobs@v2 moves on
    r2b = ops.provision(ws, "v2").id
    assert ops.retire(ws, r2)["slot_removed"] is True  # retiring again: nothing names it now
    assert not (ws.slots / read_release(ws, r2).slot.name).exists()
    assert (ws.slots / read_release(ws, r2b).slot.name).is_dir()
    actions = [e["action"] for e in st.read_state(ws)["events"]]
    assert actions.count("promote") == 2 and actions[-1] == "retire"


@pytest.mark.parametrize(
    "arms, message",
    [
        ([("a", "R1", 1.0)], ">= 2 arms"),
        ([("a", "R1", 0.5), ("a", "R2", 0.5)], "distinct, non-empty names"),
        ([("", "R1", 0.5), ("b", "R2", 0.5)], "distinct, non-empty names"),
        ([("a", "R1", 0.7), ("b", "R2", 0.7)], "sum to 1"),
        ([("a", "R1", 0.0), ("b", "R2", 1.0)], "must be > 0"),
        ([("a", "R1", float("nan")), ("b", "R2", 1.0)], "must be > 0"),
        ([("a", "R1", 0.5), ("b", "rel-v7-20261130T000000000000", 0.5)], "no release rel-v7"),
    ],
)
def test_bad_experiments_are_refused(
    ws: Workspace, arms: list[tuple[str, str, float]], message: str
) -> None:
    r1 = ops.provision(ws, "v1").id
    make_version(ws, "v2", "v1", seed=1)
    r2 = ops.provision(ws, "v2").id
    named = [(a, {"R1": r1, "R2": r2}.get(r, r), w) for a, r, w in arms]
    with pytest.raises((ValueError, KeyError, FileNotFoundError), match=message):
        ops.start_experiment(ws, "x", named)
    assert st.read_state(ws)["experiment"] is None


def test_concurrent_changes_lose_no_update(ws: Workspace) -> None:
    rid = ops.provision(ws, "v1").id
    threads = [threading.Thread(target=st.promote, args=(ws, rid)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = st.read_state(ws)["events"]
    assert [e["action"] for e in events].count("promote") == 8
    assert sum(e["changed"] for e in events if e["action"] == "promote") == 1


# ---- assignment ----


def test_assignment_is_sticky_weighted_and_salted() -> None:
    arms_spec = [{"arm": "control", "release": "A", "weight": 0.3},
                 {"arm": "treatment", "release": "B", "weight": 0.7}]  # fmt: skip
    experiment = {"salt": "exp-1", "arms": arms_spec}
    arms = [assign(experiment, member_id=m)["arm"] for m in range(1, 20001)]
    assert arms == [assign(experiment, member_id=m)["arm"] for m in range(1, 20001)]  # sticky
    assert abs(arms.count("control") / len(arms) - 0.3) < 0.02
    resalted = [
        assign({**experiment, "salt": "exp-2"}, member_id=m)["arm"] for m in range(1, 20001)
    ]
    same = np.mean([a == b for a, b in zip(arms, resalted, strict=True)])
    assert 0.5 < same < 0.65  # independent draws agree 0.3^2 + 0.7^2 = 0.58 of the time
    assert assign(experiment, request_key="cookie-9") == assign(experiment, request_key="cookie-9")
    assert 0 <= bucket("s", "member:1") < 1
    with pytest.raises(ValueError, match="member_id or a request key"):
        assign(experiment)


def test_release_workflows_run_locally_with_flyte(ws: Workspace) -> None:
    """The Flyte workflows over ebr.release (run by flytekit's local executor, as pyflyte run
    does): promote, experiment start/stop, rollback, retire."""
    from workflows import releases as wf

    r1 = ops.provision(ws, "v1").id
    make_version(ws, "v2", "v1", seed=1)
    r2 = ops.provision(ws, "v2").id
    root = str(ws.root)
    assert json.loads(wf.promote_release(workspace=root, release=r1))["release"] == r1
    arms = [f"control={r1}:0.5", f"treatment={r2}:0.5"]
    started = json.loads(wf.start_experiment(workspace=root, name="x", arms=arms))
    assert [a["release"] for a in started["arms"]] == [r1, r2]
    json.loads(wf.stop_experiment(workspace=root))
    assert json.loads(wf.promote_release(workspace=root, release=r2))["previous"] == r1
    assert json.loads(wf.rollback_release(workspace=root))["release"] == r1
    retired = json.loads(wf.retire_release(workspace=root, release=r2, keep_slot=True))
    assert (
        retired["slot_removed"] is False and st.read_state(ws)["releases"][r2]["state"] == "retired"
    )
