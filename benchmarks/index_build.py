"""FAISS index kinds on real job embeddings: build time, recall@10 against exact search, QPS.

    python -m benchmarks.index_build                          # own 20k-job workspace (~3 min)
    python -m benchmarks.index_build --workspace var/demo     # embeddings/v1/jobs.parquet there

For flat / ivf / ivfpq at ``IndexConfig`` defaults (built ``--repeats`` times, median seconds),
then for ivf and ivfpq an nprobe sweep (4, 8, 16, 32, 64) on the built index: recall@10 via
``ebr.index.build.recall_at_k`` and queries/s for one batch of ``--queries`` queries and for the
same queries searched one at a time, each as a ratio of flat's QPS measured in this run.
``flat_blas`` is the same flat index searched with FAISS's BLAS threshold lowered the way
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

from benchmarks.common import build_workspace, pyplot, save_figure, timed, write_result
from ebr.config import IndexConfig, Workspace
from ebr.index.build import (
    EXACT_BLAS_THRESHOLD,
    build_index,
    exact_topk,
    recall_at_k,
    recall_queries,
    set_faiss_threads,
)

NAME = "index_build"
NPROBES = (4, 8, 16, 32, 64)
K = 10


def job_vectors(
    workspace: Path | None, version: str, n_jobs: int, tmp: Path
) -> tuple[np.ndarray, dict[str, Any]]:
    """(float32 [n, d] job embeddings, where they came from): a workspace's, or freshly built."""
    if workspace is not None:
        path = Workspace(workspace).embeddings / version / "jobs.parquet"
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


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    return statistics.median(timed(fn)[0] for _ in range(repeats))


def search_qps(index: faiss.Index, queries: np.ndarray, repeats: int) -> dict[str, float]:
    """Queries/s searching ``queries`` [q, d] as one batch, and one query per call."""
    batch = median_seconds(lambda: index.search(queries, K), repeats)

    def singles() -> None:
        for i in range(len(queries)):
            index.search(queries[i : i + 1], K)

    single = median_seconds(singles, repeats)
    return {"batch_qps": len(queries) / batch, "single_qps": len(queries) / single}


def boundary_ties(vectors: np.ndarray, queries: np.ndarray) -> float:
    """Share of queries whose exact 10th and 11th scores tie (recall there is ambiguous)."""
    scores, _ = exact_topk(vectors, queries, K + 1)
    return float(np.mean(np.abs(scores[:, K - 1] - scores[:, K]) < 1e-6))


def plot(rows: list[dict[str, Any]], n: int, source: str) -> Any:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, key, title in (
        (axes[0], "batch_qps", "one batch of queries"),
        (axes[1], "single_qps", "one query per call"),
    ):
        for i, kind in enumerate(("flat", "flat_blas", "ivf", "ivfpq")):
            pts = [r for r in rows if r["kind"] == kind and r.get(key)]
            if not pts:
                continue
            x, y = [r[key] for r in pts], [r["recall_at_10"] for r in pts]
            marker = "*" if kind.startswith("flat") else "o"
            ax.plot(x, y, marker=marker, ms=12 if marker == "*" else 6, color=f"C{i}", label=kind)
            for r in pts:
                if r["nprobe"] is not None:
                    xy = (r[key], r["recall_at_10"])
                    ax.annotate(
                        str(r["nprobe"]),
                        xy,
                        fontsize=8,
                        textcoords="offset points",
                        xytext=(4, -10),
                    )
        ax.set_xscale("log")
        ax.set_xlabel(f"queries / s ({title})")
        ax.set_title(f"recall@10 vs QPS: {title}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="best")
    axes[0].set_ylabel("recall@10 vs exact (labels: nprobe)")
    fig.suptitle(f"FAISS indexes over {n:,} job embeddings ({source})")
    return fig


def main(
    workspace: Annotated[Path | None, typer.Option(help="reuse its embeddings")] = None,
    version: Annotated[str, typer.Option(help="embedding version in --workspace")] = "v1",
    n_jobs: Annotated[int, typer.Option(help="jobs in the self-built workspace")] = 20_000,
    queries: Annotated[int, typer.Option(help="queries per QPS / recall measurement")] = 1000,
    repeats: Annotated[int, typer.Option(help="timings per figure (median)")] = 3,
    threads: Annotated[int, typer.Option(help="FAISS OpenMP threads")] = 2,
    tmp_dir: Annotated[Path | None, typer.Option(help="where a self-built workspace goes")] = None,
) -> None:
    """Measure every index kind and write results/index_build.{json,png}."""
    if repeats < 1 or queries < 1:
        raise typer.BadParameter(f"repeats and queries must be >= 1, got {repeats}, {queries}")
    set_faiss_threads(threads)
    with tempfile.TemporaryDirectory(prefix="ebr-bench-index-", dir=tmp_dir) as tmp:
        vectors, source = job_vectors(workspace, version, n_jobs, Path(tmp))
    n, d = vectors.shape
    q = recall_queries(vectors, queries, seed=1, noise=0.1)
    rows: list[dict[str, Any]] = []
    base = IndexConfig()
    for kind in ("flat", "ivf", "ivfpq"):
        cfg = replace(base, kind=kind)
        build_s = median_seconds(lambda cfg=cfg: build_index(vectors, cfg), repeats)
        index, info = build_index(vectors, cfg)
        size_mib = len(faiss.serialize_index(index)) / 2**20
        common = {"kind": kind, "build_seconds": round(build_s, 3), "index_mib": round(size_mib, 2)}
        common["factory"] = info["factory"]
        if kind == "flat":
            rows.append(
                {**common, "nprobe": None, "default": True, **search_qps(index, q, repeats)}
            )
            rows[-1]["recall_at_10"] = recall_at_k(index, vectors, queries, K)
            previous = faiss.cvar.distance_compute_blas_threshold
            faiss.cvar.distance_compute_blas_threshold = EXACT_BLAS_THRESHOLD
            try:
                blas = len(q) / median_seconds(lambda index=index: index.search(q, K), repeats)
            finally:
                faiss.cvar.distance_compute_blas_threshold = previous
            blas_row = {**common, "kind": "flat_blas", "nprobe": None, "default": False}
            blas_row.update(batch_qps=blas, single_qps=None, recall_at_10=rows[-1]["recall_at_10"])
            rows.append(blas_row)
            continue
        ivf = faiss.extract_index_ivf(index)
        common["nlist"] = info["nlist"]
        for nprobe in sorted({*NPROBES, info["nprobe"]}):
            ivf.nprobe = min(nprobe, info["nlist"])
            row = {**common, "nprobe": int(ivf.nprobe), "default": nprobe == info["nprobe"]}
            row["recall_at_10"] = recall_at_k(index, vectors, queries, K)
            rows.append({**row, **search_qps(index, q, repeats)})
            print(rows[-1], flush=True)
    flat = next(r for r in rows if r["kind"] == "flat")
    for r in rows:
        for key in ("batch_qps", "single_qps"):
            if r.get(key):
                r[f"{key}_ratio_vs_flat"] = round(r[key] / flat[key], 2)
                r[key] = round(r[key], 1)
        r["recall_at_10"] = round(r["recall_at_10"], 4)
    results = {
        "n_vectors": n,
        "dim": d,
        "source": source,
        "exact_ties_at_10th": boundary_ties(vectors, q),
        "faiss_blas_threshold_default": int(faiss.cvar.distance_compute_blas_threshold),
        "rows": rows,
        "defaults": {r["kind"]: r for r in rows if r["default"]},
    }
    params = {"queries": queries, "k": K, "repeats": repeats, "nprobes": list(NPROBES)}
    params["index_config"] = asdict(base)
    print(write_result(NAME, threads, params, results))
    label = "own 1-epoch model" if workspace is None else str(workspace)
    print(save_figure(plot(rows, n, label), NAME))


if __name__ == "__main__":
    typer.run(main)
