"""Flyte: the workflow builds every artifact locally; every entity serializes offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from ebr.config import IndexConfig, ReembedConfig, Workspace
from ebr.index.build.aliases import read_aliases
from ebr.index.query.slot import load_slot
from ebr.release.record import read_record, read_release
from ebr.release.state import live_release, read_state
from feature_repo.store import copy_workspace
from tests.conftest import REPO, TINY_SIZE

pytestmark = pytest.mark.slow  # the whole platform, built and served


def test_build_platform_writes_every_stage(platform_ws: Path) -> None:
    jobs = pd.read_parquet(platform_ws / "data" / "jobs.parquet")
    assert len(jobs) == TINY_SIZE
    meta = json.loads((platform_ws / "models" / "v1" / "model.json").read_text())
    assert meta["version"] == "v1" and meta["metrics"]["search_recall@100"] > 0
    emb = pd.read_parquet(platform_ws / "embeddings" / "v1" / "jobs.parquet")
    assert len(emb) == TINY_SIZE and set(emb["model_version"]) == {"v1"}
    assert (platform_ws / "feature_repo" / "data" / "online.db").is_file()
    slot = load_slot(live_release(Workspace(platform_ws)).paths.slot)
    # A slot serves the catalogue's open jobs: closed ones are never indexed.
    n_open = int(jobs["active"].sum())
    assert 0 < n_open < TINY_SIZE, "the generator closes some jobs"
    assert slot.model_version == "v1" and slot.manifest["item_count"] == n_open
    assert slot.manifest["recall_at_10"] >= 0.8
    # The gate measured recall on the model's request embeddings, not on jittered job rows.
    assert slot.manifest["recall_queries_source"] == "request embeddings"
    assert read_aliases(platform_ws / "slots")["jobs@v1"] == slot.name
    report = json.loads((platform_ws / "eval" / "v1" / "eval_report.json").read_text())
    methods = report["search"]["methods"]
    assert {"ebr", "ebr_ann", "bm25", "popularity", "hybrid"} <= set(methods)
    assert methods["ebr"]["recall@100"] > methods["popularity"]["recall@100"]
    # The served ANN slot (recall@10 >= 0.95 vs exact by its gate) loses little end to end.
    assert methods["ebr_ann"]["recall@100"] > methods["ebr"]["recall@100"] - 0.05
    assert (platform_ws / "eval" / "v1" / "eval_report.png").read_bytes()[:4] == b"\x89PNG"
    assert set(report["search"]["ebr_recall@100_by_task_head"]) == {"apply", "save", "click"}
    assert report["training"]["loss_curve"] == meta["metrics"]["loss_curve"]
    # The build released what it built: a gated release of v1 is live and names that slot.
    ws = Workspace(platform_ws)
    live = read_state(ws)["live"]
    record = read_record(ws, live)
    assert record["slot"]["name"] == slot.name and record["member_interest"]["version"] == "v1"
    assert record["evaluation"]["ebr_recall@100"] == methods["ebr_ann"]["recall@100"]
    passed = {g["gate"] for g in record["gates"] if g["passed"]}
    assert passed == {"recall", "coverage", "lineage", "ranker"}  # and the ranker it trained
    assert record["ranking"]["ranker"]["id"].startswith("rank-v1-")


def test_composite_model_records_and_publishes_its_member_interest_lineage(
    platform_ws: Path,
) -> None:
    from ebr.versions import check_lineage
    from feature_repo.store import member_interest, open_store

    meta = json.loads((platform_ws / "models" / "v1" / "model.json").read_text())
    assert meta["model_config"]["interest_dim"] > 0
    assert meta["model_config"]["tasks"] == ["apply", "save", "click"]
    interest_dir = platform_ws / "interest" / "models" / "v1"
    assert check_lineage(meta, interest_dir) == "v1"
    table = pd.read_parquet(platform_ws / "interest" / "embeddings" / "v1" / "members.parquet")
    assert set(table["model_version"]) == {"v1"} and table["member_id"].is_unique
    store = open_store(platform_ws / "feature_repo")
    views = {
        p.name for p in store.get_feature_service("request_features_v1").feature_view_projections
    }
    assert views == {"member_embedding_v1", "member_profile", "member_interest_v1"}
    some = int(table["member_id"].iloc[0])
    vec = member_interest(store, [some], "v1")[some]
    assert vec is not None
    assert vec.shape == (meta["model_config"]["interest_dim"],)
    expected = table.set_index("member_id").loc[some, "embedding"]
    assert abs(vec - expected).max() < 1e-6


def test_nightly_reembed_builds_a_candidate_and_keeps_the_live_release(
    platform_ws: Path, tmp_path: Path
) -> None:
    from workflows.platform import reembed

    ws = copy_workspace(platform_ws, tmp_path / "ws", publish_versions=False).root
    before = live_release(Workspace(ws)).slot.name
    flat = IndexConfig(kind="flat")
    after = reembed(config=ReembedConfig(workspace=str(ws), version="v1", index=flat))
    assert after != before and read_aliases(ws / "slots")["jobs@v1"] == after
    assert load_slot(ws / "slots" / before).name == before  # old slot intact for rollback
    assert load_slot(ws / "slots" / after).manifest["index"]["kind"] == "flat"
    # The nightly launch plan passes no version: it re-embeds whatever live serves now.
    again = reembed(config=ReembedConfig(workspace=str(ws), index=flat, history_holdout_days=2))
    assert again not in (before, after) and read_aliases(ws / "slots")["jobs@v1"] == again
    assert load_slot(ws / "slots" / again).model_version == "v1"
    # Each run recorded a candidate release of its slot; neither moved the live release.
    state = read_state(Workspace(ws))
    assert state["live"] == read_state(Workspace(platform_ws))["live"]
    candidates = [r for r, e in state["releases"].items() if e["state"] == "candidate"]
    slots = {read_release(Workspace(ws), r).slot.name for r in candidates}
    assert slots == {after, again}
    assert {read_release(Workspace(ws), r).parent for r in candidates} == {state["live"]}


def test_pyflyte_package_serializes_workflows_and_launch_plans(tmp_path: Path) -> None:
    out = tmp_path / "pkg.tgz"
    pyflyte = str(Path(sys.executable).with_name("pyflyte"))
    cmd = [
        pyflyte,
        "--pkgs",
        "workflows",
        "package",
        "--image",
        "ebr:test",
        "-o",
        str(out),
        "--force",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with tarfile.open(out) as tar:
        names = tar.getnames()
        lp = next(n for n in names if "nightly_reembed" in n)
        lp_bytes = tar.extractfile(lp).read()  # type: ignore[union-attr]
        compaction = next(n for n in names if "compact_slots" in n and n.endswith(".pb")
                          and "ebr.compact_slots" in n)  # fmt: skip
        compaction_bytes = tar.extractfile(compaction).read()  # type: ignore[union-attr]
    entities = ["build_platform", "reembed", "nightly_reembed", "generate_marketplace"]
    entities += ["train_two_tower", "embed_catalog", "publish_features", "build_index_slot"]
    entities += ["evaluate_model", "train_ranker", "record_release", "provision_release"]
    entities += ["promote_release"]
    entities += ["rollback_release", "start_experiment", "stop_experiment", "retire_release"]
    entities += ["start_streaming", "stop_streaming", "compact_slots", "fold_streamed_changes"]
    for entity in entities:
        assert any(entity in n for n in names), f"{entity} missing from {names}"
    assert b"0 2 * * *" in lp_bytes  # the cron schedule is in the serialized launch plan
    assert b"15 * * * *" in compaction_bytes  # hourly compaction of the streamed slots


def test_each_step_runs_after_the_one_whose_files_it_reads() -> None:
    """No task takes an input only to be ordered: the order is explicit in the graph."""
    from workflows.platform import build_platform, reembed

    def upstream(wf: object) -> dict[str, set[str]]:
        nodes = wf.nodes  # type: ignore[attr-defined]
        name = {n.id: getattr(n.flyte_entity, "name", n.id).split(".")[-1] for n in nodes}
        return {name[n.id]: {name[u.id] for u in n.upstream_nodes} for n in nodes}

    steps = upstream(reembed)
    assert "fold_streamed_changes" in steps["embed_member_interest"]
    assert "embed_member_interest" in steps["embed_catalog"]
    assert "embed_catalog" in steps["publish_features"]
    assert "publish_features" in steps["build_index_slot"]
    build = upstream(build_platform)
    # Re-embedding (its first step folds the streamed changes into the catalogue) waits for the
    # model training wrote; the rest follow it.
    assert "train_two_tower" in build["fold_streamed_changes"]
    assert "fold_streamed_changes" in build["embed_member_interest"]
    assert "embed_member_interest" in build["embed_catalog"]
    assert "publish_features" in build["build_index_slot"]
    assert "build_index_slot" in build["evaluate_model"]
    # The ranker replays the slot's retrieval and follows the evaluation; the release pins it.
    assert {"build_index_slot", "evaluate_model"} <= build["train_ranker"]
    assert "train_ranker" in build["record_release"]
