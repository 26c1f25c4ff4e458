"""Embedding releases: turn a version's job embeddings into a served index slot.

A release ties together what was co-trained: the model artifact (models/<version>), the
embeddings its item tower produced (embeddings/<version>) and the slot built from them. The
slot manifest records the model version, and aliases ``jobs@<version>`` / ``jobs@live`` are
moved only after the slot is complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ebr.config import IndexConfig, Workspace
from ebr.index.aliases import set_alias
from ebr.index.slot import load_slot, slot_name_for, write_slot
from ebr.model.artifact import check_version

# What a search response shows and filters can test, kept in the slot next to the id map.
SLOT_COLUMNS = (
    "job_id",
    "title",
    "company",
    "industry",
    "city",
    "country",
    "lat",
    "lon",
    "seniority",
    "employment_type",
    "remote",
    "active",
    "posted_at",
)


def load_embeddings(path: Path, id_col: str, version: str) -> tuple[np.ndarray, np.ndarray]:
    """Read an embeddings parquet: -> ids int64 [n], vectors float32 [n, dim].

    Refuses rows written by another model version (a slot must hold exactly one version).
    """
    df = pd.read_parquet(path)
    versions = set(df["model_version"].unique())
    if versions != {version}:
        raise ValueError(
            f"{path} holds model versions {sorted(versions)}, expected only {version!r}"
        )
    vecs = np.asarray(np.stack(df["embedding"].to_numpy()), dtype=np.float32)
    return df[id_col].to_numpy(np.int64), vecs


def build_job_slot(
    ws: Workspace, version: str, cfg: IndexConfig, aliases: tuple[str, ...] = ("live",)
) -> dict[str, Any]:
    """Build a new immutable slot for ``version`` and point ``jobs@<version>`` (+ aliases) at it."""
    check_version(version)
    ids, vecs = load_embeddings(ws.embeddings / version / "jobs.parquet", "job_id", version)
    jobs = pd.read_parquet(ws.data / "jobs.parquet", columns=list(SLOT_COLUMNS))
    items = pd.DataFrame({"job_id": ids}).merge(jobs, on="job_id", how="left", validate="1:1")
    if items["title"].isna().any():
        missing = items.loc[items["title"].isna(), "job_id"].head(5).tolist()
        raise ValueError(f"embedded jobs missing from data/jobs.parquet, e.g. {missing}")
    name = slot_name_for(version)
    path = write_slot(ws.slots, name, vecs, items, version, cfg)
    for alias in (version, *aliases):
        set_alias(ws.slots, f"jobs@{alias}", name)
    manifest = load_slot(path, verify=False).manifest
    return {
        "slot": name,
        "path": str(path),
        **{k: manifest[k] for k in ("recall_at_10", "build_seconds", "item_count")},
    }
