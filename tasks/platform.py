"""Flyte tasks: each is a thin call into one core or pipeline function.

Tasks exchange the workspace root (a path on shared storage) plus the path each stage
produced, so Flyte orders them by data dependency and caches nothing stale.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from flytekit import Resources, task

from ebr.config import DataConfig, IndexConfig, ModelConfig, TrainConfig, Workspace


@task(requests=Resources(cpu="2", mem="4Gi"), retries=1)
def generate_marketplace(workspace: str, size: int, seed: int) -> str:
    """Write jobs/members/impressions Parquet tables; returns the data folder."""
    from ebr.data.marketplace import write_marketplace

    ws = Workspace(Path(workspace))
    print(write_marketplace(DataConfig(n_jobs=size, seed=seed), ws.data))
    return str(ws.data)


@task(requests=Resources(cpu="2", mem="4Gi"))
def train_two_tower(workspace: str, data_dir: str, version: str, epochs: int) -> str:
    """Train on the impression log and save models/<version>; returns the model folder."""
    import pandas as pd

    from ebr.model.artifact import save_model
    from ebr.model.train import train

    tables = {
        n: pd.read_parquet(Path(data_dir) / f"{n}.parquet")
        for n in ("jobs", "members", "impressions")
    }
    tcfg = TrainConfig(epochs=epochs)
    model, metrics = train(
        tables["jobs"], tables["members"], tables["impressions"], ModelConfig(), tcfg
    )
    print(metrics)
    return str(
        save_model(
            model,
            Workspace(Path(workspace)).models,
            version,
            {"train": asdict(tcfg), "metrics": metrics},
        )
    )


@task(requests=Resources(cpu="2", mem="4Gi"), retries=1)
def embed_catalog(workspace: str, model_dir: str, version: str, batch_size: int) -> str:
    """Beam batch inference over all jobs and members; returns the embeddings folder."""
    from pipelines.embed import run

    out = run(["--workspace", workspace, "--version", version, "--batch-size", str(batch_size)])
    print(out)
    return str(out["path"])


@task(requests=Resources(cpu="1", mem="2Gi"), retries=1)
def publish_features(workspace: str, embeddings_dir: str, version: str) -> str:
    """feast apply + materialize the version's embedding tables; returns the feature repo."""
    from feature_repo.store import publish

    print(publish(Path(workspace), version))
    return str(Workspace(Path(workspace)).feature_repo)


@task(requests=Resources(cpu="2", mem="4Gi"))
def build_index_slot(
    workspace: str, embeddings_dir: str, version: str, index_kind: str, nprobe: int
) -> str:
    """Build an immutable FAISS slot from the job embeddings; moves jobs@<version> and jobs@live."""
    from ebr.releases import build_job_slot

    info = build_job_slot(
        Workspace(Path(workspace)), version, IndexConfig(kind=index_kind, nprobe=nprobe)
    )
    print(info)
    return str(info["slot"])


@task(requests=Resources(cpu="2", mem="4Gi"), enable_deck=True)
def evaluate_model(workspace: str, model_dir: str, version: str) -> str:
    """EBR vs BM25 / popularity / hybrid on held-out days; JSON + PNG, shown as a Flyte Deck."""
    import pandas as pd
    from flytekit import Deck

    from ebr.eval.report import evaluate_marketplace, report_html, write_report
    from ebr.model.artifact import load_two_tower

    ws = Workspace(Path(workspace))
    tables = {
        n: pd.read_parquet(ws.data / f"{n}.parquet") for n in ("jobs", "members", "impressions")
    }
    model, mcfg, _ = load_two_tower(Path(model_dir))
    report = evaluate_marketplace(
        model,
        mcfg,
        tables["jobs"],
        tables["members"],
        tables["impressions"],
        TrainConfig().eval_days,
    )
    json_path, png_path = write_report(report, ws.root / "eval" / version)
    Deck("Evaluation", report_html(report, png_path))
    return str(json_path)
