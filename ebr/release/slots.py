"""Embedding releases: turn a version's job embeddings into a served index slot.

A release ties together what was co-trained: the model artifact (models/<version>), the
embeddings its item tower produced (embeddings/<version>) and the slot built from them. The
slot manifest records the model version; the alias ``jobs@<version>`` (the newest slot built
for that version: what the next ``provision`` of it pins by default) moves only after the slot
is complete. Nothing here decides what serves: ``releases/state.json`` does.

A slot holds the catalogue's open jobs (``open_jobs``): a closed job (``active`` false, in the
batch table or closed through the stream) is never served, and the coverage gate
(``ebr.release.gates``) expects exactly these. A job reopened through the stream is upserted
back into the serving slots by the streaming job.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ebr.config import IndexConfig, Workspace
from ebr.data.records import check_jobs
from ebr.index.build.aliases import point, read_aliases
from ebr.index.build.writer import slot_name_for, write_slot
from ebr.index.query.slot import load_slot
from ebr.stream.catalog import current_jobs
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


def open_jobs(jobs: pd.DataFrame) -> pd.Series:
    """bool [len(jobs)]: the rows a slot serves, those whose ``active`` is true (a null counts
    as closed, as the record contract refuses it)."""
    return jobs["active"].astype("boolean").fillna(False).astype(bool)


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


MIN_TUNING_REQUESTS = 100  # fewer request embeddings than this: the gate uses held-out rows


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


def build_job_slot(ws: Workspace, version: str, cfg: IndexConfig) -> dict[str, Any]:
    """Build a new immutable slot for ``version`` and point ``jobs@<version>`` at it (what
    serves is a release: ``ebr.release.provision`` records the slot as one).

    Jobs whose record breaks the record contract (``ebr.data.records``) are left out and
    counted (``rejected_jobs``), as are closed jobs (``closed_jobs``); the catalogue is
    ``data/jobs.parquet`` with the last compaction's streamed changes
    (``ebr.stream.catalog.current_jobs``, what the coverage gate checks against). An
    unreadable ``aliases.json`` refuses before the build; if moving the alias fails, the new
    slot is removed again.
    """
    check_version(version)
    read_aliases(ws.slots)  # fail before the build, not after it
    ids, vecs = load_embeddings(version_paths(ws, version).jobs, "job_id", version)
    jobs, rejected = check_jobs(current_jobs(ws, list(SLOT_COLUMNS)), required=SLOT_COLUMNS)
    items = pd.DataFrame({"job_id": ids}).merge(jobs, on="job_id", how="left", validate="1:1")
    embedded_only = items["title"].isna().to_numpy()
    if embedded_only.any():
        bad = {r.id for r in rejected}
        unknown = [int(j) for j in items.loc[embedded_only, "job_id"] if j not in bad]
        if unknown:
            raise ValueError(f"embedded jobs missing from the catalogue, e.g. {unknown[:5]}")
    closed = ~embedded_only & ~open_jobs(items).to_numpy()
    keep = ~embedded_only & ~closed
    items, vecs = items[keep].reset_index(drop=True), vecs[keep]
    name = slot_name_for(version)
    requests = tuning_requests(ws, version, cfg) if cfg.tune_on == "requests" else None
    path = write_slot(ws.slots, name, vecs, items, version, cfg, tuning_queries=requests)
    try:
        point(ws.slots, name, [f"jobs@{version}"])
    except BaseException:
        shutil.rmtree(path)  # nothing names it (no log yet): the aliases are as they were
        raise
    manifest = load_slot(path, verify=False).manifest
    return {
        "slot": name,
        "path": str(path),
        "rejected_jobs": len(rejected),
        "rejected_examples": [str(r) for r in rejected[:5]],
        "closed_jobs": int(closed.sum()),
        **{k: manifest[k] for k in ("recall_at_10", "build_seconds", "item_count")},
    }
