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

from ebr.config import LIVE_MODES, IndexConfig, Workspace
from ebr.data.records import check_jobs
from ebr.index.build.aliases import promote, refresh, set_alias
from ebr.index.build.writer import slot_name_for, write_slot
from ebr.index.query.slot import load_slot
from ebr.versions import check_version, version_paths

# What a search response shows, filters test and term retrieval reads (skills, description:
# ``ebr.index.query.terms``), kept in the slot next to the id map.
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
    "skills",
    "description",
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


MIN_TUNING_REQUESTS = 100  # fewer request embeddings than this: the gate uses jittered rows


def tuning_requests(ws: Workspace, version: str, cfg: IndexConfig) -> np.ndarray | None:
    """float32 [<= 2 * recall_queries, d] request embeddings of ``version`` for the slot's
    recall gate (half tune, half report): its request tower's member embeddings (what JYMBII
    requests search with), sampled with ``cfg.seed``; None when there are too few."""
    path = version_paths(ws, version).members
    if not path.is_file():
        return None
    _, vecs = load_embeddings(path, "member_id", version)
    if len(vecs) < MIN_TUNING_REQUESTS:
        return None
    rng = np.random.default_rng(cfg.seed)
    rows = np.sort(rng.choice(len(vecs), min(len(vecs), 2 * cfg.recall_queries), replace=False))
    return np.ascontiguousarray(vecs[rows])


def build_job_slot(
    ws: Workspace, version: str, cfg: IndexConfig, live: str = "refresh"
) -> dict[str, Any]:
    """Build a new immutable slot for ``version``; point ``jobs@<version>`` at it, and
    ``jobs@live`` as ``live`` says:

    - ``refresh`` (scheduled runs): only if live is unset or serves ``version`` already, so a
      nightly run refreshes the live version and never moves live to another one;
    - ``promote``: always (an operator's explicit release of ``version``);
    - ``keep``: never.

    Jobs whose record breaks the record contract (``ebr.data.records``) are left out and
    counted (``rejected_jobs``); the rest of the catalogue is served.
    """
    check_version(version)
    if live not in LIVE_MODES:
        raise ValueError(f"live must be one of {LIVE_MODES}, got {live!r}")
    ids, vecs = load_embeddings(version_paths(ws, version).jobs, "job_id", version)
    jobs = pd.read_parquet(ws.data / "jobs.parquet", columns=list(SLOT_COLUMNS))
    jobs, rejected = check_jobs(jobs, required=SLOT_COLUMNS)
    items = pd.DataFrame({"job_id": ids}).merge(jobs, on="job_id", how="left", validate="1:1")
    embedded_only = items["title"].isna().to_numpy()
    if embedded_only.any():
        bad = {r.id for r in rejected}
        unknown = [int(j) for j in items.loc[embedded_only, "job_id"] if j not in bad]
        if unknown:
            raise ValueError(f"embedded jobs missing from data/jobs.parquet, e.g. {unknown[:5]}")
        items, vecs = items[~embedded_only].reset_index(drop=True), vecs[~embedded_only]
    name = slot_name_for(version)
    requests = tuning_requests(ws, version, cfg) if cfg.tune_on == "requests" else None
    path = write_slot(ws.slots, name, vecs, items, version, cfg, tuning_queries=requests)
    set_alias(ws.slots, f"jobs@{version}", name)
    live_moved = live == "promote"
    if live_moved:
        promote(ws.slots, "jobs@live", name)
    elif live == "refresh":
        live_moved = refresh(ws.slots, "jobs@live", name)
    manifest = load_slot(path, verify=False).manifest
    return {
        "slot": name,
        "path": str(path),
        "live_moved": live_moved,
        "rejected_jobs": len(rejected),
        "rejected_examples": [str(r) for r in rejected[:5]],
        **{k: manifest[k] for k in ("recall_at_10", "build_seconds", "item_count")},
    }
