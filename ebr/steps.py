"""The build's model steps as plain functions over a workspace: what the Flyte tasks
(``tasks.platform``) and the ``ebr`` command line (``cli``) both call.

    tables = read_tables(ws.data)
    interest_dir = train_member_interest(ws, "v1", TrainConfig(epochs=6))
    model_dir = train_two_tower(ws, "v1", interest_dir, ModelConfig(), TrainConfig(epochs=6))
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from ebr.config import ModelConfig, TrainConfig, Workspace

TABLES = ("jobs", "members", "impressions")


def read_tables(data_dir: Path) -> dict[str, pd.DataFrame]:
    """The marketplace tables in ``data_dir``.

    Raises:
        FileNotFoundError: a table is missing (named), e.g. a workspace deleted under a cached
        Flyte result, or ``ebr generate`` not run yet.
    """
    missing = [n for n in TABLES if not (Path(data_dir) / f"{n}.parquet").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{data_dir} lacks {missing}: generate the marketplace first (ebr generate), or "
            "rerun a cached Flyte build with --overwrite-cache"
        )
    return {n: pd.read_parquet(Path(data_dir) / f"{n}.parquet") for n in TABLES}


def train_member_interest(ws: Workspace, interest_version: str, tcfg: TrainConfig) -> Path:
    """Train the member-interest model on the workspace's log; -> interest/models/<iv>."""
    from ebr.model.artifact import save_model
    from ebr.model.interest import train_interest

    t = read_tables(ws.data)
    model, metrics = train_interest(t["jobs"], t["members"], t["impressions"], tcfg)
    meta = {"train": asdict(tcfg), "metrics": metrics}
    return Path(save_model(model, ws.interest_models, interest_version, meta))


def train_two_tower(
    ws: Workspace, version: str, interest_dir: Path, mcfg: ModelConfig, tcfg: TrainConfig
) -> tuple[Path, dict[str, Any]]:
    """Train the composite multi-task model on the log, co-trained with the member-interest
    model at ``interest_dir`` (lineage saved in model.json); -> (models/<version>, metrics)."""
    from ebr.model.artifact import save_model
    from ebr.model.train import train_with_interest
    from ebr.text import training_vocabulary

    t = read_tables(ws.data)
    trained, metrics, lineage = train_with_interest(
        t["jobs"], t["members"], t["impressions"], Path(interest_dir), mcfg, tcfg
    )
    meta = {"train": asdict(tcfg), "metrics": metrics, "lineage": lineage}
    vocab = training_vocabulary(t["jobs"], t["members"], t["impressions"])
    return Path(save_model(trained, ws.models, version, meta, vocab)), metrics
