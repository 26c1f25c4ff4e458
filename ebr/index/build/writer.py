"""Writing index slots (build time): one FAISS index, the jobs it was built from, their exact
vectors and term index, and a manifest, under a fresh name (``ebr.index.query.slot`` documents
the layout and reads it back).

A slot is written once under a temp name and renamed into place (``ebr.io.atomic_directory``),
so a reader sees a complete slot or none.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd

from ebr.config import IndexConfig
from ebr.data.records import check_jobs, require_valid
from ebr.index.build.faiss_index import build_index, recalls_on
from ebr.index.build.tune import SOURCE_REQUESTS, tune
from ebr.index.build.tune import tuning_queries as catalogue_queries
from ebr.index.query.params import index_kind, set_search_params
from ebr.index.query.slot import (
    DATA_FILES,
    FORMAT_VERSION,
    INDEX_FILE,
    ITEMS_FILE,
    MANIFEST_FILE,
    VECTORS_FILE,
    check_name,
)
from ebr.index.query.terms import TERMS_DIR, TermIndex, term_text
from ebr.index.query.vectors import check_vectors
from ebr.io import atomic_directory, atomic_write_json, atomic_write_parquet, sha256_file
from ebr.metrics import recall_lower_bound
from ebr.progress import report


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
    tuning_queries: np.ndarray | None = None,
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
            number a compaction folded (``ebr.index.live.handover.fold_into_slot``).
        tuning_queries: float32 [q, d] unit request embeddings of the same model (q >= 2):
            the recall gate tunes on every other one and the manifest's ``recall_at_10`` is
            measured on the rest. Requests sit farther from the catalogue than jittered job
            rows, so a gate tuned on rows alone can pass settings that miss the target on
            real requests (20k-job demo: nprobe 2 on rows, 16 on request embeddings). None:
            held-out catalogue rows, each searched leave-one-out (jittered rows when
            ``cfg.tune_on`` is "jittered"); ``recall_queries_source`` says which.

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
    requests = None
    if tuning_queries is not None:
        requests = check_vectors(tuning_queries, "tuning_queries")
        if len(requests) < 2 or requests.shape[1] != vectors.shape[1]:
            raise ValueError(
                f"tuning_queries must be >= 2 rows of d={vectors.shape[1]}, got {requests.shape}"
            )
    target = Path(slots_dir) / name
    if target.exists():
        # Fail before the expensive build; atomic_directory checks again at write time.
        raise FileExistsError(f"slot already exists (slots are immutable): {target}")

    # Recall gate: the cheapest search setting reaching cfg.target_recall is applied, and a
    # slot that cannot reach it is refused here (RecallGateError), before anything is written.
    # The claim is measured on the other half of the queries, not the ones the tuner picked with.
    own: np.ndarray | None = None
    if requests is not None:
        queries, source = requests, SOURCE_REQUESTS
    else:
        n_queries = 2 * min(cfg.recall_queries, len(vectors))
        queries, own, source = catalogue_queries(vectors, cfg, n_queries, cfg.seed)

    start = time.perf_counter()
    report("slot", stage=f"building the {cfg.kind} index over {len(vectors):,} vectors")
    index, info = build_index(vectors, cfg, untrained=own)  # held-out rows: out of sample
    build_seconds = time.perf_counter() - start
    report("slot", stage=f"tuning to recall@10 >= {cfg.target_recall}")
    gate_index, gate_vectors = index, vectors
    if own is not None and index_kind(index) == "hnsw":
        # A held-out row's own links lead its leave-one-out search to its neighbours: the
        # gate tunes a graph built the same way without those rows, searched by them.
        keep = np.ones(len(vectors), dtype=bool)
        keep[own] = False
        gate_vectors = vectors[keep]
        gate_index, _ = build_index(gate_vectors, cfg)
        own = None
    # A catalogue of a row or two has one query: it tunes and claims on the same one.
    halves = (slice(0, None, 2), slice(1, None, 2)) if len(queries) > 1 else (slice(None),) * 2
    tune_own, claim_own = (None, None) if own is None else (own[halves[0]], own[halves[1]])
    tuned = tune(gate_index, gate_vectors, cfg, queries=queries[halves[0]], own=tune_own,
                 source=source)  # fmt: skip
    per_query = recalls_on(gate_index, gate_vectors, queries[halves[1]], k=10, own=claim_own)
    set_search_params(index, tuned["chosen"])
    info.update(tuned["chosen"])

    start = time.perf_counter()
    report("slot", stage="indexing the terms (BM25)")
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
            # The recall the slot claims: the 99% lower bound measured on the queries the
            # tuner did not pick with, so new queries of that kind get at least this.
            "recall_at_10": recall_lower_bound(per_query),
            "recall_at_10_measured": float(per_query.mean()),
            "recall_queries": len(per_query),  # what the claim is measured on
            "recall_queries_source": source,
            "tuning": {
                "target_recall": tuned["target_recall"],
                "tuned_recall_at_10": tuned["recall_at_10"],
                "tuned_recall_lower_at_10": tuned["recall_lower_at_10"],
                "tuning_queries": tuned["n_queries"],
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
