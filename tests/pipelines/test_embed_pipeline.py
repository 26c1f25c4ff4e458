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
