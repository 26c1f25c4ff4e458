"""Batch embedding on Beam's DaskRunner over a local ``dask.distributed`` cluster of 2 worker
processes (``pipelines.batch.sharded``) writes what the main pipeline writes on the local
runner: the same ids, the same vectors, the same dead letters, from a table with repeated ids
and records that break the contract. The cluster is stopped by its own close (its processes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ebr.config import DataConfig, ModelConfig, TrainConfig, Workspace
from ebr.data.marketplace import write_marketplace
from ebr.model.artifact import save_model
from ebr.model.train import train

pytestmark = pytest.mark.slow  # the real stack (Beam on Dask) end to end

CFG = ModelConfig(hash_buckets=4096, cat_buckets=512, token_dim=16, hidden=32, dim=16)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    write_marketplace(DataConfig(n_jobs=400, seed=4), ws.data)
    names = ("jobs", "members", "impressions")
    tables = {n: pd.read_parquet(ws.data / f"{n}.parquet") for n in names}
    model, _ = train(tables["jobs"], tables["members"], tables["impressions"], CFG,
                     TrainConfig(epochs=1, batch_size=32))  # fmt: skip
    save_model(model, ws.models, "v1", {})
    jobs = tables["jobs"]
    bad = pd.concat([jobs, jobs.iloc[[5]]], ignore_index=True)  # job 5's id twice
    bad.loc[7, "title"] = None  # a record that breaks the contract (title required)
    bad.to_parquet(ws.data / "jobs.parquet")
    return ws


def read(out: Path) -> tuple[dict[str, pd.DataFrame], list[tuple]]:
    tables = {}
    for kind, key in (("jobs", "job_id"), ("members", "member_id")):
        t = pd.read_parquet(out / f"{kind}.parquet").sort_values(key).reset_index(drop=True)
        tables[kind] = t
    dead = sorted(
        (r["stage"], r["kind"], str(r.get("id")), str(r.get("field")))
        for r in map(json.loads, (out / "deadletter.jsonl").read_text().splitlines())
    )
    return tables, dead


def test_dask_runner_writes_what_the_local_runner_writes(ws: Workspace) -> None:
    from distributed import LocalCluster

    from pipelines.batch.embed import embed_catalog
    from pipelines.batch.sharded import DASK_RUNNER, embed_catalog_sharded

    local = embed_catalog(ws, "v1", batch_size=64)
    want, want_dead = read(ws.embeddings / "v1")
    shutil.copytree(ws.embeddings / "v1", ws.root / "local-run")
    assert local["dead_letter_total"] == 3 and len(want_dead) == 3  # 2 repeated + 1 refused
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:  # fmt: skip
        options = [f"--runner={DASK_RUNNER}", f"--dask_client_address={cluster.scheduler_address}"]
        got_summary = embed_catalog_sharded(ws, "v1", 64, options, shard_rows=100)
        workers = len(cluster.scheduler_info["workers"])
    assert workers == 2 and got_summary["shards"] >= 6
    from distributed import default_client

    with pytest.raises(ValueError):  # the runner's client is closed, not left the default
        default_client()
    got, got_dead = read(ws.embeddings / "v1")
    assert got_dead == want_dead
    for kind, key in (("jobs", "job_id"), ("members", "member_id")):
        assert got_summary[kind] == local[kind] == len(want[kind])
        np.testing.assert_array_equal(got[kind][key], want[kind][key])
        np.testing.assert_allclose(np.stack(got[kind]["embedding"]),
                                   np.stack(want[kind]["embedding"]), atol=1e-6)  # fmt: skip
        assert (got[kind]["model_version"] == "v1").all()
