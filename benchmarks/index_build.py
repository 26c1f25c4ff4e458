"""FAISS index kinds on real job embeddings: build time, recall@10 against exact search, QPS.

    python -m benchmarks.index_build                          # own 20k-job workspace (~5 min)
    python -m benchmarks.index_build --workspace var/demo     # embeddings/v1/jobs.parquet there

Variants: every kind at ``IndexConfig`` defaults (flat, ivf, ivfpq, hnsw), plus ivfpq at the
other PQ code width (4-bit fast-scan vs 8-bit). Each is built ``--build-repeats`` times at
``--threads`` and at 1 thread (median seconds); then one search knob is swept on the built index
(nprobe 4..64 for ivf/ivfpq, ef_search 16..256 for hnsw, plus the default), measuring recall@10
(``ebr.index.build.faiss_index.ann_recall_at_k``, ``--queries`` jittered catalogue rows) and
queries/s for one batch of ``--queries`` queries and for the same queries one call each (at
``--threads`` and at 1 thread), median of ``--repeats``, each also as a ratio of flat's QPS in
this run.
``flat_blas`` is the flat index searched with FAISS's BLAS threshold lowered the way
``exact_topk`` does it, since the default (128k queries) keeps batches on the scalar path.
Writes ``benchmarks/results/index_build.json`` and ``index_build.png``.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Any

import faiss
import numpy as np
import pandas as pd
import typer

from benchmarks.common import (
    build_workspace,
    compact_log_ticks,
    pyplot,
    save_figure,
    timed,
    write_result,
)
from ebr.config import IndexConfig, Workspace
from ebr.index.build.faiss_index import (
    ann_recall_at_k,
    build_index,
    recall_queries,
    set_faiss_threads,
)
from ebr.index.query.params import search_params, set_search_params
from ebr.metrics import EXACT_BLAS_THRESHOLD, exact_topk
from ebr.versions import version_paths

NAME = "index_build"
K = 10
# The knob each kind is swept over (IndexConfig's default value is always added to the sweep).
SWEEPS: dict[str, tuple[str, tuple[int, ...]]] = {
    "ivf": ("nprobe", (4, 8, 16, 32, 64)),
    "ivfpq": ("nprobe", (4, 8, 16, 32, 64)),
    "hnsw": ("ef_search", (16, 32, 64, 128, 256)),
}
# Every kind at IndexConfig defaults; ivfpq also at both PQ code widths (4-bit fast-scan and
# 8-bit trade build time against recall very differently), the default one under "ivfpq".
OTHER_NBITS = 12 - IndexConfig().pq_nbits  # 8 when the default is 4, and the other way round
VARIANTS: dict[str, dict[str, Any]] = {
    "flat": {"kind": "flat"},
    "ivf": {"kind": "ivf"},
    "ivfpq": {"kind": "ivfpq"},
    f"ivfpq_{OTHER_NBITS}bit": {"kind": "ivfpq", "pq_nbits": OTHER_NBITS},
    "hnsw": {"kind": "hnsw"},
}
QPS_KEYS = ("batch_qps", "single_qps", "single_qps_1thread")
# The plot shows best-of-repeats QPS: on a shared 2-core machine the slower runs measure the
# neighbours' load (OpenMP threads stall when a core is taken), not the index. Medians are in
# the JSON too.
PLOTTED = "_best"


def job_vectors(
    workspace: Path | None, version: str, n_jobs: int, tmp: Path
) -> tuple[np.ndarray, dict[str, Any]]:
    """(float32 [n, d] job embeddings, where they came from): a workspace's, or freshly built."""
    if workspace is not None:
        path = version_paths(Workspace(workspace), version).jobs
        if not path.is_file():
            raise typer.BadParameter(f"no job embeddings at {path} (run the embed step first)")
        emb = pd.read_parquet(path, columns=["embedding"])["embedding"]
        return np.stack(emb.to_numpy()).astype(np.float32), {"workspace": str(path)}
    from ebr.model.artifact import load_item_tower
    from ebr.model.infer import encode_jobs

    setup = build_workspace(tmp, n_jobs, epochs=1)
    item, cfg, _ = load_item_tower(tmp / "models" / "v1")
    jobs = pd.read_parquet(tmp / "data" / "jobs.parquet").to_dict("records")
    return encode_jobs(item, jobs, cfg), {"built": setup}


def seconds(fn: Callable[[], Any], repeats: int, threads: int | None = None) -> list[float]:
    """Wall seconds of ``repeats`` calls, optionally with FAISS capped at ``threads``."""
    previous = faiss.omp_get_max_threads()
    if threads is not None:
        set_faiss_threads(threads)
    try:
        return [timed(fn)[0] for _ in range(repeats)]
    finally:
        set_faiss_threads(previous)


def rate(n: int, secs: list[float], key: str) -> dict[str, float]:
    """items/s at the median time, and at the best time (least disturbed by other load)."""
    return {key: n / statistics.median(secs), f"{key}_best": n / min(secs)}


def search_qps(index: faiss.Index, queries: np.ndarray, repeats: int) -> dict[str, float]:
    """Queries/s for ``queries`` [q, d] as one batch, and one query per call (also 1 thread)."""

    def singles() -> None:
        for i in range(len(queries)):
            index.search(queries[i : i + 1], K)

    nq = len(queries)
    return {
        **rate(nq, seconds(lambda: index.search(queries, K), repeats), "batch_qps"),
        **rate(nq, seconds(singles, repeats), "single_qps"),
        **rate(nq, seconds(singles, repeats, threads=1), "single_qps_1thread"),
    }


def flat_blas_qps(index: faiss.Index, queries: np.ndarray, repeats: int) -> dict[str, float]:
    """Batch QPS of a flat index with the BLAS threshold ``exact_topk`` uses (restored after)."""
    previous = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = EXACT_BLAS_THRESHOLD
    try:
        return rate(len(queries), seconds(lambda: index.search(queries, K), repeats), "batch_qps")
    finally:
        faiss.cvar.distance_compute_blas_threshold = previous


def boundary_ties(vectors: np.ndarray, queries: np.ndarray) -> float:
    """Share of queries whose exact 10th and 11th scores tie (recall there is ambiguous)."""
    scores, _ = exact_topk(vectors, queries, K + 1)
    return float(np.mean(np.abs(scores[:, K - 1] - scores[:, K]) < 1e-6))


def plot(rows: list[dict[str, Any]], n: int, source: str, threads: int) -> Any:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), sharey=True)
    panels = (
        ("batch_qps", f"one batch of queries, {threads} threads"),
        ("single_qps", f"one query per call, {threads} threads"),
        ("single_qps_1thread", "one query per call, 1 thread"),
    )
    for ax, (metric, title) in zip(axes, panels, strict=True):
        key = metric + PLOTTED
        for i, variant in enumerate(("flat", "flat_blas", *list(VARIANTS)[1:])):
            pts = [r for r in rows if r["variant"] == variant and r.get(key)]
            if not pts:
                continue
            x, y = [r[key] for r in pts], [r["recall_at_10"] for r in pts]
            star = variant.startswith("flat")
            label = f"{variant}: {pts[0]['factory']}" + (
                " (BLAS)" if variant == "flat_blas" else ""
            )
            ax.plot(x, y, marker="*" if star else "o", ms=13 if star else 6, color=f"C{i}",
                    label=label)  # fmt: skip
            for r in pts:
                if r["value"] is not None:
                    xy = (r[key], r["recall_at_10"])
                    ax.annotate(str(r["value"]), xy, fontsize=8, textcoords="offset points",
                                xytext=(4, -10))  # fmt: skip
        ax.set_xscale("log")
        compact_log_ticks(ax.xaxis)
        ax.set_xlabel("queries / s (best of --repeats)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[0].set_ylabel("recall@10 vs exact (labels: nprobe; ef_search for hnsw)")
    fig.suptitle(f"FAISS indexes over {n:,} job embeddings ({source})")
    return fig


def main(
    workspace: Annotated[Path | None, typer.Option(help="reuse its embeddings")] = None,
    version: Annotated[str, typer.Option(help="embedding version in --workspace")] = "v1",
    n_jobs: Annotated[int, typer.Option(help="jobs in the self-built workspace")] = 20_000,
    queries: Annotated[int, typer.Option(help="queries per QPS / recall measurement")] = 1000,
    repeats: Annotated[int, typer.Option(help="timings per QPS figure (median)")] = 5,
    build_repeats: Annotated[int, typer.Option(help="builds per variant (median)")] = 3,
    threads: Annotated[int, typer.Option(help="FAISS OpenMP threads")] = 2,
    tmp_dir: Annotated[Path | None, typer.Option(help="where a self-built workspace goes")] = None,
) -> None:
    """Measure every index variant and write results/index_build.{json,png}."""
    if min(repeats, build_repeats, queries) < 1:
        raise typer.BadParameter("repeats, build repeats and queries must be >= 1")
    set_faiss_threads(threads)
    with tempfile.TemporaryDirectory(prefix="ebr-bench-index-", dir=tmp_dir) as tmp:
        vectors, source = job_vectors(workspace, version, n_jobs, Path(tmp))
    n, d = vectors.shape
    q = recall_queries(vectors, queries, seed=1, noise=0.1)
    rows: list[dict[str, Any]] = []
    for variant, overrides in VARIANTS.items():
        cfg = replace(IndexConfig(), **overrides)
        build = seconds(lambda cfg=cfg: build_index(vectors, cfg), build_repeats)
        build_1t = seconds(lambda cfg=cfg: build_index(vectors, cfg), build_repeats, threads=1)
        index, info = build_index(vectors, cfg)
        common = {
            "variant": variant,
            "kind": info["kind"],
            "factory": info["factory"],
            "nlist": info["nlist"],
            "build_seconds": round(statistics.median(build), 3),
            "build_seconds_1thread": round(statistics.median(build_1t), 3),
            "index_mib": round(len(faiss.serialize_index(index)) / 2**20, 2),
        }
        if info["kind"] == "flat":
            recall = ann_recall_at_k(index, vectors, queries, K)
            rows.append({**common, "knob": None, "value": None, "default": True})
            rows[-1].update(recall_at_10=recall, **search_qps(index, q, repeats))
            if variant != "flat":  # an IVF/HNSW request degraded to flat (tiny catalogue)
                continue
            blas = {**common, "variant": "flat_blas", "knob": None, "value": None, "default": False}
            rows.append({**blas, "recall_at_10": recall, **flat_blas_qps(index, q, repeats)})
            continue
        knob, sweep = SWEEPS[info["kind"]]
        cap = info["nlist"] if knob == "nprobe" else max(sweep)  # nprobe > nlist is rejected
        for value in sorted({*(min(v, cap) for v in sweep), info[knob]}):
            set_search_params(index, {knob: value})
            row = {**common, "knob": knob, "value": value, "default": value == info[knob]}
            row["search_params"] = search_params(index)
            row["recall_at_10"] = ann_recall_at_k(index, vectors, queries, K)
            rows.append({**row, **search_qps(index, q, repeats)})
            print({k: row[k] for k in ("variant", "knob", "value", "recall_at_10")}, flush=True)
    flat = next(r for r in rows if r["variant"] == "flat")
    for r in rows:
        for key in [q + suffix for q in QPS_KEYS for suffix in ("", "_best")]:
            if r.get(key):
                r[f"{key}_ratio_vs_flat"] = round(r[key] / flat[key], 2)
        for key in [k for k in r if "qps" in k and not k.endswith("ratio_vs_flat")]:
            r[key] = round(r[key], 1)
        r["recall_at_10"] = round(r["recall_at_10"], 4)
    results = {
        "n_vectors": n,
        "dim": d,
        "source": source,
        "exact_ties_at_10th": boundary_ties(vectors, q),
        "faiss_blas_threshold_default": int(faiss.cvar.distance_compute_blas_threshold),
        "rows": rows,
        "defaults": {r["variant"]: r for r in rows if r["default"]},
    }
    params = {"queries": queries, "k": K, "repeats": repeats, "build_repeats": build_repeats}
    params.update(sweeps=SWEEPS, variants=VARIANTS, index_config=asdict(IndexConfig()))
    print(write_result(NAME, threads, params, results))
    label = "own 1-epoch model" if workspace is None else str(workspace)
    print(save_figure(plot(rows, n, label, threads), NAME))


if __name__ == "__main__":
    typer.run(main)
