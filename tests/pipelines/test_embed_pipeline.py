"""The Beam batch-inference pipeline on a real TestPipeline (local in-process runner)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from ebr.config import DataConfig, ModelConfig, TrainConfig, Workspace
from ebr.data.marketplace import write_marketplace
from ebr.model.artifact import load_item_tower, load_request_tower, save_model
from ebr.model.infer import encode_jobs, encode_requests
from ebr.model.train import train

CFG = ModelConfig(hash_buckets=4096, cat_buckets=512, token_dim=16, hidden=32, dim=16)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    write_marketplace(DataConfig(n_jobs=300, seed=4), ws.data)
    tables = {
        n: pd.read_parquet(ws.data / f"{n}.parquet") for n in ("jobs", "members", "impressions")
    }
    model, _ = train(
        tables["jobs"],
        tables["members"],
        tables["impressions"],
        CFG,
        TrainConfig(epochs=1, batch_size=32),
    )
    save_model(model, ws.models, "v1", {})
    return ws


def _test_pipeline() -> TestPipeline:
    return TestPipeline(options=PipelineOptions(["--runner=FnApiRunner"]))


def test_pipeline_embeds_every_job_and_member_like_the_torch_loop(ws: Workspace) -> None:
    from pipelines.embed import run

    out = run(
        ["--workspace", str(ws.root), "--version", "v1", "--batch-size", "64"],
        test_pipeline=_test_pipeline(),
    )
    assert out["jobs"] == 300 and out["members"] == 60
    jobs_out = pd.read_parquet(ws.embeddings / "v1" / "jobs.parquet").sort_values("job_id")
    assert (jobs_out["model_version"] == "v1").all()
    assert jobs_out["event_timestamp"].notna().all()

    # Same vectors as the plain torch loop (no train/serve skew through Beam).
    jobs = pd.read_parquet(ws.data / "jobs.parquet").sort_values("job_id")
    item, cfg, _ = load_item_tower(ws.models / "v1")
    expected = encode_jobs(item, jobs.to_dict("records"), cfg)
    np.testing.assert_allclose(np.stack(jobs_out["embedding"].to_numpy()), expected, atol=1e-5)

    members = pd.read_parquet(ws.data / "members.parquet").sort_values("member_id")
    mem_out = pd.read_parquet(ws.embeddings / "v1" / "members.parquet").sort_values("member_id")
    req, cfg, _ = load_request_tower(ws.models / "v1")
    exp_m = encode_requests(req, [None] * len(members), members.to_dict("records"), cfg)
    np.testing.assert_allclose(np.stack(mem_out["embedding"].to_numpy()), exp_m, atol=1e-5)


def test_embed_transform_keys_rows_by_id(ws: Workspace) -> None:
    import apache_beam as beam

    from pipelines.embed import EmbedRecords

    jobs = pd.read_parquet(ws.data / "jobs.parquet").head(7).to_dict("records")
    with _test_pipeline() as p:
        rows = p | beam.Create(jobs) | EmbedRecords("jobs", ws.models / "v1", batch_size=4)
        ids = rows | beam.Map(lambda r: (r["job_id"], r["model_version"], len(r["embedding"])))
        assert_that(ids, equal_to([(int(j["job_id"]), "v1", 16) for j in jobs]))


def test_bad_arguments_fail_clearly(ws: Workspace) -> None:
    from pipelines.embed import run

    with pytest.raises(ValueError, match="version"):
        run(["--workspace", str(ws.root), "--version", "latest"])
    with pytest.raises(FileNotFoundError, match="model.json"):
        run(["--workspace", str(ws.root), "--version", "v9"])


@pytest.fixture(scope="module")
def composite_ws(tmp_path_factory) -> Workspace:
    """A member-interest model v2 and a composite model v1 co-trained with it."""
    from ebr.model.interest import train_interest
    from ebr.model.train import train_with_interest

    ws = Workspace(tmp_path_factory.mktemp("composite"))
    write_marketplace(DataConfig(n_jobs=300, seed=4), ws.data)
    tables = [pd.read_parquet(ws.data / f"{n}.parquet") for n in ("jobs", "members", "impressions")]
    tcfg = TrainConfig(epochs=1, batch_size=32)
    interest, _ = train_interest(*tables, tcfg)
    idir = save_model(interest, ws.interest_models, "v2", {})
    model, _, lineage = train_with_interest(*tables, idir, CFG, tcfg)
    save_model(model, ws.models, "v1", {"lineage": lineage})
    return ws


def test_interest_pipeline_matches_point_in_time_history_and_feeds_members(
    composite_ws: Workspace,
) -> None:
    from ebr.model.artifact import load_two_tower
    from ebr.model.infer import run_tower
    from ebr.model.interest import engagements, history_as_of, member_batch
    from pipelines.embed import run

    ws = composite_ws
    before = "2026-10-25T00:00:00+00:00"
    out = run(
        ["--workspace", str(ws.root), "--interest-version", "v2", "--history-before", before],
        test_pipeline=_test_pipeline(),
    )
    assert out["members"] == 60
    got = pd.read_parquet(ws.interest_embeddings / "v2" / "members.parquet")
    got = got.sort_values("member_id")
    assert (got["model_version"] == "v2").all()
    # The same vectors as the core's history (engagements strictly before the cut) + tower.
    members = pd.read_parquet(ws.data / "members.parquet").sort_values("member_id")
    jobs = pd.read_parquet(ws.data / "jobs.parquet")
    imp = pd.read_parquet(ws.data / "impressions.parquet")
    hist = history_as_of(engagements(imp, jobs), pd.Timestamp(before))
    assert hist and len(hist) < 60  # some members have history before the cut, not all
    interest, icfg, _ = load_two_tower(ws.interest_models / "v2")
    expected = run_tower(interest.request, member_batch(members.to_dict("records"), hist, icfg))
    np.testing.assert_allclose(np.stack(got["embedding"].to_numpy()), expected, atol=1e-5)

    # The composite model's member embeddings read those interest vectors (joined in Beam).
    run(["--workspace", str(ws.root), "--version", "v1"], test_pipeline=_test_pipeline())
    mem_out = pd.read_parquet(ws.embeddings / "v1" / "members.parquet").sort_values("member_id")
    req, cfg, _ = load_request_tower(ws.models / "v1")
    recs = [{**m, "interest": v} for m, v in zip(members.to_dict("records"), expected, strict=True)]
    exp_m = encode_requests(req, [None] * len(recs), recs, cfg)
    np.testing.assert_allclose(np.stack(mem_out["embedding"].to_numpy()), exp_m, atol=1e-5)


def test_member_embedding_refuses_an_interest_model_that_is_not_its_lineage(
    composite_ws: Workspace, tmp_path
) -> None:
    import shutil

    from ebr.model.artifact import LineageError
    from pipelines.embed import run

    root = tmp_path / "ws"
    shutil.copytree(composite_ws.root, root)
    (root / "interest" / "models" / "v2" / "model.json").unlink()
    with pytest.raises(LineageError, match="member-interest v2"):
        run(["--workspace", str(root), "--version", "v1"], test_pipeline=_test_pipeline())
