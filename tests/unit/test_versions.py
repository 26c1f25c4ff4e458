"""ebr.versions: the one reader of a model version's facts (config, co-trained interest)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from ebr.config import ModelConfig, Workspace
from ebr.versions import (
    check_version,
    interest_paths,
    interest_version,
    model_config,
    read_meta,
    version_paths,
)


@pytest.mark.parametrize("good", ["v1", "v2", "v123456"])
def test_versions_look_like_v_and_a_number(good: str) -> None:
    assert check_version(good) == good


@pytest.mark.parametrize("bad", ["1", "latest", "v", "v1.0", "V1", "v1234567", "", None, 1])
def test_other_versions_are_refused_by_name(bad: object) -> None:
    with pytest.raises(ValueError, match="version must match"):
        check_version(bad)  # type: ignore[arg-type]


def test_model_json_facts(tmp_path: Path) -> None:
    cfg = ModelConfig(interest_dim=32)
    meta = {
        "version": "v3",
        "model_config": asdict(cfg),
        "lineage": {"member_interest": {"version": "v2", "dim": 32}},
    }
    (tmp_path / "model.json").write_text(json.dumps(meta))
    read = read_meta(tmp_path)
    assert model_config(read) == cfg and interest_version(read) == "v2"
    assert interest_version({"model_config": asdict(ModelConfig())}) is None
    with pytest.raises(ValueError, match="version must match"):
        interest_version({"lineage": {"member_interest": {"version": "../v1"}}})
    with pytest.raises(FileNotFoundError, match="model.json missing"):
        read_meta(tmp_path / "nowhere")


def test_eval_days_are_the_ones_the_model_recorded() -> None:
    from ebr.versions import eval_days

    assert eval_days({"train": {"eval_days": 3}}) == 3
    for meta in ({}, {"train": {}}, {"train": {"eval_days": 0}}, {"train": {"eval_days": "2"}}):
        with pytest.raises(ValueError, match="records no train.eval_days"):
            eval_days(meta)


def test_a_versions_paths_come_from_one_place(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    p = version_paths(ws, "v2")
    assert (p.model, p.embeddings) == (tmp_path / "models" / "v2", tmp_path / "embeddings" / "v2")
    assert (p.jobs.name, p.members.name) == ("jobs.parquet", "members.parquet")
    assert p.jobs.parent == p.members.parent == p.embeddings
    i = interest_paths(ws, "v7")
    assert i.model == tmp_path / "interest" / "models" / "v7"
    assert i.members == tmp_path / "interest" / "embeddings" / "v7" / "members.parquet"
    # A name that is not a version never becomes a path (no "../" out of the workspace).
    for bad in ("../v1", "latest", "v1/.."):
        with pytest.raises(ValueError, match="version must match"):
            version_paths(ws, bad)
        with pytest.raises(ValueError, match="version must match"):
            interest_paths(ws, bad)


def test_no_adapter_joins_a_versions_paths_by_hand() -> None:
    """Every place that needs where a version lives asks version_paths / interest_paths."""
    import re

    from tests.conftest import REPO

    joined = re.compile(r"\.(models|embeddings|interest_models|interest_embeddings)\s*/")
    owner = REPO / "ebr" / "versions.py"
    found = []
    folders = ("ebr", "pipelines", "tasks", "workflows", "serving", "feature_repo", "benchmarks")
    for folder in folders:
        for path in (REPO / folder).rglob("*.py"):
            if path == owner:
                continue
            for i, line in enumerate(path.read_text().splitlines(), start=1):
                if joined.search(line):
                    found.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert found == []
    assert joined.search("ws.models / version") and joined.search("ws.interest_embeddings /iv")
