"""Exact slots (``ebr.index.query.device``: torch, the filter as a mask before the top-k) on
the device present, beside the CPU IVF-PQ slot, at 1M and 10M items.

    python -m benchmarks.device_exact [--sizes 1000000,10000000] [--ivfpq-max 1000000]

Clustered unit vectors (d 64); queries are other rows drawn the same way. Per size: the exact scan's
single-query p50 and its batch throughput (queries of 64), unfiltered and with 10% of the rows
eligible; the IVF-PQ slot's (``IndexConfig()`` defaults, searched through the planner) at the
sizes up to ``--ivfpq-max`` (building one at 10M takes too long on 2 cores), with its
recall@10 against the exact pages. torch and FAISS get the same threads (all cores).
Writes benchmarks/results/device_exact.json and device_exact.png.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any

import numpy as np
import typer

from benchmarks.common import pyplot, save_figure, write_result

NAME = "device_exact"
D, K = 64, 10


def unit(n: int, seed: int) -> np.ndarray:
    """Clustered unit rows (2,000 centres, as embeddings cluster by occupation), in chunks:
    float64 draws of 10M rows would need 5 GB."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((2_000, D), dtype=np.float32)
    out = np.empty((n, D), np.float32)
    for start in range(0, n, 1_000_000):
        m = min(n, start + 1_000_000) - start
        x = centres[rng.integers(0, len(centres), m)]
        x += 0.6 * rng.standard_normal((m, D), dtype=np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def timing(fn: Any, q: np.ndarray, singles: int, batches: int) -> dict[str, float]:
    """Single-query p50/p99 ms over ``singles`` queries; QPS of ``batches`` batches of 64."""
    one = []
    for i in range(singles):
        t0 = time.perf_counter()
        fn(q[i : i + 1])
        one.append((time.perf_counter() - t0) * 1e3)
    t0 = time.perf_counter()
    for b in range(batches):
        fn(q[b * 64 : (b + 1) * 64])
    qps = batches * 64 / (time.perf_counter() - t0)
    p50, p99 = (round(float(np.percentile(one, p)), 3) for p in (50, 99))
    return {"p50_ms": p50, "p99_ms": p99, "batch64_qps": round(qps, 1)}


def one_size(
    n: int, q: np.ndarray, where: str, ivfpq_max: int, singles: int, batches: int
) -> dict[str, Any]:
    from ebr.config import IndexConfig
    from ebr.index.build.faiss_index import build_index
    from ebr.index.query.device import DeviceExact
    from ebr.index.query.planner import filtered_search

    vectors = unit(n, 0)
    mask = np.random.default_rng(2).random(n) < 0.1
    row: dict[str, Any] = {}
    t0 = time.perf_counter()
    exact = DeviceExact(vectors, where)
    row["exact_load_s"] = round(time.perf_counter() - t0, 2)
    row["exact"] = timing(lambda x: exact.search(x, K), q, singles, batches)
    row["exact_filtered_10pct"] = timing(lambda x: exact.search(x, K, mask), q, singles, batches)
    print(n, "exact", row["exact"], "filtered", row["exact_filtered_10pct"], flush=True)
    if n > ivfpq_max:
        row["ivfpq"] = f"not built: over --ivfpq-max {ivfpq_max} (build time on this machine)"
        return row
    t0 = time.perf_counter()
    index, info = build_index(vectors, IndexConfig())
    row["ivfpq_build_s"] = round(time.perf_counter() - t0, 1)
    row["ivfpq_factory"] = info["factory"]
    row["ivfpq"] = timing(
        lambda x: filtered_search(index, vectors, x, K, None), q, singles, batches
    )
    row["ivfpq_filtered_10pct"] = timing(
        lambda x: filtered_search(index, vectors, x, K, mask), q, singles, batches
    )
    got = filtered_search(index, vectors, q[:200], K, None)[1]
    want = exact.search(q[:200], K)[1]
    hits = [len(set(a) & set(b)) / K for a, b in zip(got, want, strict=True)]
    row["ivfpq_recall_at_10"] = round(float(np.mean(hits)), 4)
    row["exact_p50_vs_ivfpq"] = round(row["exact"]["p50_ms"] / row["ivfpq"]["p50_ms"], 2)
    print(n, "ivfpq", row["ivfpq"], "recall", row["ivfpq_recall_at_10"], flush=True)
    return row


def main(
    sizes: Annotated[
        str, typer.Option(help="catalogue sizes, comma-separated")
    ] = "1000000,10000000",
    ivfpq_max: Annotated[
        int, typer.Option(help="largest size an IVF-PQ slot is built at")
    ] = 1_000_000,
    singles: Annotated[int, typer.Option(help="single queries timed")] = 50,
    batches: Annotated[int, typer.Option(help="batches of 64 timed")] = 4,
) -> None:
    import faiss
    import torch

    from ebr.index.query.device import default_device

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    where = default_device()
    q = unit(64 * batches + singles, 1)
    results: dict[str, Any] = {"device": where, "threads": threads,
                               "device_name": torch.cuda.get_device_name(0) if where == "cuda"
                               else "cpu"}  # fmt: skip
    for n in (int(s) for s in sizes.split(",")):
        results[str(n)] = one_size(n, q, where, ivfpq_max, singles, batches)
    params = {"sizes": sizes, "dim": D, "k": K, "singles": singles, "batches": batches,
              "ivfpq_max": ivfpq_max}  # fmt: skip
    write_result(NAME, threads, params, results)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    labels, values = [], []
    for n, row in ((k, v) for k, v in results.items() if isinstance(v, dict)):
        for kind in ("exact", "exact_filtered_10pct", "ivfpq", "ivfpq_filtered_10pct"):
            if isinstance(row.get(kind), dict):
                labels.append(f"{int(n) // 1_000_000}M {kind}")
                values.append(row[kind]["batch64_qps"])
    ax.barh(labels, values)
    ax.set_xscale("log")
    ax.set_xlabel("queries/s (batches of 64)")
    ax.set_title(f"exact slots on {results['device_name']} vs IVF-PQ on the CPU")
    save_figure(fig, NAME)


if __name__ == "__main__":
    typer.run(main)
