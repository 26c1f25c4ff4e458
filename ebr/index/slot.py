"""Index slots: immutable directories holding one FAISS index and the jobs it was built from.

Layout of ``slots_dir``::

    <slot-name>/index.faiss      FAISS index; id i is row i of items.parquet
    <slot-name>/items.parquet    job_id (int64) + display columns (title, company, city, ...)
    <slot-name>/vectors.npy      float32 [n, d]: the exact vectors, row i = FAISS id i
    <slot-name>/terms/           BM25 index over the items' text (``ebr.index.terms``)
    <slot-name>/manifest.json    model version, effective index params, recall@10, checksums
    <slot-name>.log/             live upserts/deletes on top of the slot (``ebr.index.live``)
    aliases.json                 alias -> slot name + history (``ebr.index.aliases``)

A slot is written once under a temp name and renamed into place (``ebr.io.atomic_directory``),
so a reader sees a complete slot or none. Serving follows an alias (``ebr.index.aliases``); a
new model version or a compaction gets a new slot and flipping the alias is the release (and
the rollback).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd

from ebr.config import IndexConfig
from ebr.data.records import check_jobs, require_valid
from ebr.index.build import build_index, check_vectors, recall_at_k
from ebr.index.terms import TERMS_DIR, TermIndex, term_text
from ebr.index.tune import tune
from ebr.io import atomic_directory, atomic_write_json, atomic_write_parquet, sha256_file

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.parquet"
VECTORS_FILE = "vectors.npy"  # the exact vectors: filtered exact scans, live merges, re-tuning
MANIFEST_FILE = "manifest.json"
DATA_FILES = (INDEX_FILE, ITEMS_FILE, VECTORS_FILE)
# No separators, no leading dot (that is how temp dirs are named).
SLOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(value: str, what: str, pattern: re.Pattern[str] = SLOT_NAME) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{what} must match {pattern.pattern}, got {value!r}")
    return value


def _check_items(items: pd.DataFrame, n_rows: int) -> pd.DataFrame:
    """Validate ``items`` against the vector count; return it with a 0..n-1 index, int64 ids."""
    if not isinstance(items, pd.DataFrame) or "job_id" not in items.columns:
        raise ValueError("items must be a DataFrame with a 'job_id' column")
    if len(items) != n_rows:
        raise ValueError(f"items has {len(items)} rows but vectors has {n_rows}; they must align")
    ids = items["job_id"]
    if not pd.api.types.is_integer_dtype(ids.dtype):
        raise ValueError(f"job_id must be an integer column, got dtype {ids.dtype}")
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise ValueError(
            f"job_id must be unique, {len(duplicated)} repeat (e.g. {duplicated.iloc[0]})"
        )
    if (ids < 0).any():
        # -1 is the padding id in search results; a real negative id would be ambiguous.
        raise ValueError(f"job_id must be >= 0, got {int(ids.min())}")
    # Readers (attribute index, filters, responses) rely on the record contract: a slot with
    # one lat=200 would fail every filtered search it serves, so it is refused here.
    out = require_valid(check_jobs(items), "slot items").reset_index(drop=True)
    out["job_id"] = out["job_id"].astype(np.int64)
    return out


def slot_name_for(model_version: str) -> str:
    """A fresh slot name for ``model_version``, e.g. ``jobs-v3-20261126T101500123456``."""
    check_name(model_version, "model_version")
    return f"jobs-{model_version}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}"


def write_slot(
    slots_dir: Path,
    name: str,
    vectors: np.ndarray,
    items: pd.DataFrame,
    model_version: str,
    cfg: IndexConfig,
    lineage: dict[str, Any] | None = None,
) -> Path:
    """Build an index over ``vectors`` and write it atomically as ``slots_dir/name/``.

    Args:
        slots_dir: parent folder of all slots (``Workspace.slots``).
        name: the new slot's folder name (see ``slot_name_for``).
        vectors: float32 [n, d], L2-normalised job embeddings; row i is ``items`` row i.
        items: n rows, ``job_id`` (unique, int) plus display columns.
        model_version: the embedding model the vectors came from; queries must use the same.
        cfg: index kind and parameters.
        lineage: JSON-able provenance stored in the manifest, e.g. the slot and log sequence
            number a compaction folded (``ebr.index.live.compact``).

    Returns:
        The slot directory.

    Raises:
        ValueError: invalid vectors, items or names. FileExistsError: the slot already exists.
    """
    check_name(name, "slot name")
    check_name(model_version, "model_version")
    vectors = check_vectors(vectors)
    items = _check_items(items, len(vectors))
    if cfg.recall_queries < 1:
        raise ValueError(f"recall_queries must be >= 1, got {cfg.recall_queries}")
    target = Path(slots_dir) / name
    if target.exists():
        # Fail before the expensive build; atomic_directory checks again at write time.
        raise FileExistsError(f"slot already exists (slots are immutable): {target}")

    start = time.perf_counter()
    index, info = build_index(vectors, cfg)
    build_seconds = time.perf_counter() - start
    n_queries = min(cfg.recall_queries, len(vectors))
    # Recall gate: the cheapest search setting reaching cfg.target_recall is applied, and a
    # slot that cannot reach it is refused here (RecallGateError), before anything is written.
    tuned = tune(index, vectors, cfg, n_queries=n_queries)
    info.update(tuned["chosen"])
    # Reported recall uses fresh queries (another seed), not the ones the tuner picked with.
    recall = recall_at_k(index, vectors, n_queries, k=10, seed=cfg.seed + 1)

    start = time.perf_counter()
    terms = TermIndex.build(term_text(items))  # what term and hybrid retrieval search
    terms_seconds = time.perf_counter() - start

    with atomic_directory(target) as tmp:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        atomic_write_parquet(tmp / ITEMS_FILE, items)
        np.save(tmp / VECTORS_FILE, vectors)
        terms.save(tmp / TERMS_DIR)
        files = [*DATA_FILES, *(p.relative_to(tmp).as_posix() for p in (tmp / TERMS_DIR).iterdir())]
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "model_version": model_version,
            "dim": int(vectors.shape[1]),
            "metric": "cosine",
            "index": info,
            "item_count": len(items),
            "recall_at_10": recall,
            "recall_queries": n_queries,
            "tuning": {
                "target_recall": tuned["target_recall"],
                "tuned_recall_at_10": tuned["recall_at_10"],
                "chosen": tuned["chosen"],
                "settings_tried": len(tuned["sweep"]),
                # The planner's recall under filters made from the vectors (tune.gate_filters).
                "filtered_recall_at_10": tuned["filtered_recall_at_10"],
            },
            "build_seconds": round(build_seconds, 3),
            "terms": {
                "documents": terms.n_docs,
                "avg_terms": round(terms.avgdl, 2),
                "build_seconds": round(terms_seconds, 3),
            },
            "created_at": datetime.now(UTC).isoformat(),
            "faiss_version": faiss.__version__,
            "checksums": {f: sha256_file(tmp / f) for f in sorted(files)},
            "lineage": lineage or {},
        }
        atomic_write_json(tmp / MANIFEST_FILE, manifest)
    return target


def check_queries(queries: np.ndarray, k: int, dim: int, slot_name: str) -> np.ndarray:
    """Validate a search request; return the queries as C-contiguous float32 [q, dim]."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not isinstance(queries, np.ndarray) or queries.ndim != 2:
        shape = getattr(queries, "shape", type(queries).__name__)
        raise ValueError(f"queries must be a 2-D array [q, d], got shape {shape}")
    if queries.shape[1] != dim:
        raise ValueError(
            f"query dim mismatch: slot {slot_name} expects d={dim}, got d={queries.shape[1]}"
        )
    if not np.issubdtype(queries.dtype, np.floating):
        raise ValueError(f"queries must be floating point, got {queries.dtype}")
    if not len(queries):
        return np.ascontiguousarray(queries, dtype=np.float32)
    # The catalogue's rules (finite, unit rows): a NaN query would otherwise come back as
    # all -1 from FAISS, or trip an internal check deep in the planner.
    return check_vectors(np.ascontiguousarray(queries, dtype=np.float32), "queries")


@dataclass(frozen=True, eq=False)
class Slot:
    """A loaded slot. Treat it as read-only: it is shared by every request that searches it."""

    path: Path
    manifest: dict[str, Any]
    items: pd.DataFrame  # row i = FAISS id i
    index: faiss.Index
    vectors: np.ndarray  # [n, d] float32, memory-mapped; row i = FAISS id i
    terms: TermIndex | None = None  # BM25 over the items' text; None in slots built before it
    _job_ids: np.ndarray = field(init=False, repr=False)  # [n] int64, FAISS id -> job_id
    _by_job: pd.DataFrame = field(init=False, repr=False)  # items indexed by job_id

    def __post_init__(self) -> None:
        object.__setattr__(self, "_job_ids", self.items["job_id"].to_numpy(np.int64))
        object.__setattr__(self, "_by_job", self.items.set_index("job_id", drop=False))

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def model_version(self) -> str:
        return str(self.manifest["model_version"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def job_ids(self) -> np.ndarray:
        """[n] int64, row (= FAISS id) -> job_id. Read-only by convention, like the slot."""
        return self._job_ids

    def rows(self, job_ids: Sequence[int] | np.ndarray) -> pd.DataFrame:
        """Display rows (job_id + display columns) for ``job_ids``, in that order.

        Negative ids (search padding) are skipped; an id not in this slot is a KeyError.
        """
        ids = np.asarray(job_ids, dtype=np.int64).ravel()
        ids = ids[ids >= 0]
        missing = ids[~np.isin(ids, self._job_ids)]
        if len(missing):
            raise KeyError(f"job_ids not in slot {self.name}: {missing[:10].tolist()}")
        return self._by_job.loc[ids].reset_index(drop=True)


def load_slot(path: Path, verify: bool = True) -> Slot:
    """Open the slot at ``path``; with ``verify`` check every file against its sha256 first.

    Raises:
        FileNotFoundError: a slot file is missing.
        ValueError: checksum mismatch, unknown format, or files that disagree with the manifest.
    """
    path = Path(path)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"slot {path} has format_version {manifest.get('format_version')!r}, "
            f"expected {FORMAT_VERSION}"
        )
    if verify:
        checksums = manifest.get("checksums", {})
        for file in DATA_FILES:
            if file not in checksums:
                raise ValueError(f"manifest of {path} has no checksum for {file}")
        for file, digest in checksums.items():  # the data files and the term index's
            if sha256_file(path / file) != digest:
                raise ValueError(f"checksum mismatch for {file} in slot {path}")
    index = faiss.read_index(str(path / INDEX_FILE))
    items = pd.read_parquet(path / ITEMS_FILE)
    # Memory-mapped: exact scans touch only the rows they need; pages are shared by processes.
    vectors = np.load(path / VECTORS_FILE, mmap_mode="r")
    counts = {
        "index": index.ntotal,
        "items": len(items),
        "vectors": len(vectors),
        "manifest": manifest["item_count"],
    }
    if len(set(counts.values())) != 1:
        raise ValueError(f"slot {path} item counts disagree: {counts}")
    if index.d != manifest["dim"]:
        raise ValueError(f"slot {path} index dim {index.d} != manifest dim {manifest['dim']}")
    terms = TermIndex.load(path / TERMS_DIR) if "terms" in manifest else None
    if terms is not None and terms.n_docs != len(items):
        raise ValueError(f"slot {path} term index has {terms.n_docs} documents, not {len(items)}")
    return Slot(path, manifest, items, index, vectors, terms)
