"""Live slots at catalogue scale: durable append throughput, search QPS with churn, compaction.

    python -m benchmarks.live_slot                 # 1M x 64 vectors (~5 min on 2 cores)
    python -m benchmarks.live_slot --n 200000      # quicker

Vectors: real job embeddings when another benchmark cached them in ``var/bench-cache`` (see
``CACHES``; used when they have ``--dim``), else seeded random unit vectors (the hardest case
for IVF/PQ).
Steps, over one slot built with ``IndexConfig(kind=--kind, nprobe=--nprobe)`` (IVF-Flat at
nprobe 32 by default: recall@10 ~0.97 on the cached real vectors, so a recall gap shows; the
default IVF-PQ fast-scan config reaches only ~0.2 on them):

1. upsert (existing jobs: each supersedes a snapshot row) and delete throughput, records/s at
   batch sizes 1, 100, 1000, each batch one fsync, on a hard-linked copy of the slot;
2. search QPS (one batch of ``--queries``, and one query per call) and recall@10 against exact
   search: before churn, live after deleting 10% of the jobs and re-inserting them with the
   same vectors (uncompacted), after ``compact``, and for a fresh build over the same vectors.

Writes ``benchmarks/results/live_slot.json`` and ``live_slot.png``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer

from benchmarks.common import REPO_ROOT, compact_log_ticks, pyplot, save_figure, timed, write_result
from ebr.config import IndexConfig
from ebr.index.build.faiss_index import recall_queries, set_faiss_threads
from ebr.index.build.writer import write_slot
from ebr.index.live.handover import fold_into_slot
from ebr.index.live.slot import LiveSlot, open_live
from ebr.index.query.slot import load_slot
from ebr.metrics import exact_topk

NAME = "live_slot"
K = 10
CACHE_DIR = REPO_ROOT / "var" / "bench-cache"
# Real job embeddings other benchmarks cache (benchmarks/ann_curves.py writes the second form).
CACHES = ("jobs_1m_vectors.npy", "jobs1000000-*/jobs.npy")
BATCHES = {1: 300, 100: 50, 1000: 20}  # batch size -> batches timed (records = product)
CHURN = 0.10


def catalogue(n: int, dim: int, n_queries: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, str]:
    """(vectors float32 [n, dim], queries [q, dim], items with display columns, source).

    Queries are the cached request embeddings beside cached job vectors where there are enough,
    else jittered catalogue rows (``recall_queries``).
    """
    for path in sorted(p for pattern in CACHES for p in CACHE_DIR.glob(pattern)):
        cached = np.load(path, mmap_mode="r")
        if cached.shape[0] >= n and cached.shape[1] == dim:
            vectors, source = np.ascontiguousarray(cached[:n], dtype=np.float32), str(path)
            break
    else:
        x = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
        vectors, source = x / np.linalg.norm(x, axis=1, keepdims=True), "random unit vectors"
    requests = Path(source).parent / "requests.npy"
    if requests.is_file() and np.load(requests, mmap_mode="r").shape[0] >= n_queries:
        queries = np.ascontiguousarray(np.load(requests)[:n_queries], dtype=np.float32)
        source += " + cached request vectors as queries"
    else:
        queries = recall_queries(vectors, n_queries, seed=1, noise=0.1)
    items = pd.DataFrame(
        {
            "job_id": np.arange(n, dtype=np.int64) + 1,
            "title": [f"job title {i % 5000}" for i in range(n)],
            "city": [f"city {i % 300}" for i in range(n)],
            "remote": np.arange(n) % 4 == 0,
        }
    )
    return vectors, queries, items, source


def append_rate(live: LiveSlot, vectors: np.ndarray, items: pd.DataFrame, kind: str) -> list:
    """Records/s of upserts or deletes at each batch size (distinct rows per batch size)."""
    rows, start = [], 0
    for size, batches in BATCHES.items():
        t0 = time.perf_counter()
        for _ in range(batches):
            sl = slice(start, start + size)
            if kind == "upsert":
                live.upsert(items.iloc[sl], vectors[sl])
            else:
                live.delete(items["job_id"].to_numpy()[sl])
            start += size
        secs = time.perf_counter() - t0
        rows.append({"kind": kind, "batch": size, "records": size * batches,
                     "records_per_s": round(size * batches / secs, 1),
                     "ms_per_batch": round(1000 * secs / batches, 3)})  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def qps(
    search: Callable[[np.ndarray, int], Any], queries: np.ndarray, repeats: int, threads: int
) -> dict:
    """Median queries/s: one batch of ``queries`` at ``threads``, and one query per call (first
    200) at 1 FAISS thread. Single queries at 2+ OpenMP threads were 10-20x slower on a loaded
    2-core machine (faiss splits one query's flat scan across threads), so a server answering
    single queries would run them at 1 thread."""
    single = queries[:200]

    def singles() -> None:
        for i in range(len(single)):
            search(single[i : i + 1], K)

    batch = [timed(lambda: search(queries, K))[0] for _ in range(repeats)]
    set_faiss_threads(1)
    try:
        one = [timed(singles)[0] for _ in range(repeats)]
    finally:
        set_faiss_threads(threads)
    return {"batch_qps": round(len(queries) / statistics.median(batch), 1),
            "single_qps_1thread": round(len(single) / statistics.median(one), 1)}  # fmt: skip


def recall(
    search: Callable[[np.ndarray, int], Any], queries: np.ndarray, truth: np.ndarray
) -> float:
    """Mean |top-10 ∩ exact top-10| / 10; ``truth`` [q, 10] job ids."""
    found = search(queries, K)[1]
    hits = [len(np.intersect1d(t, f)) for t, f in zip(truth, found, strict=True)]
    return round(float(np.mean(hits)) / K, 4)


def plot(appends: list[dict], phases: dict[str, dict], n: int, source: str) -> Any:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for i, kind in enumerate(("upsert", "delete")):
        pts = [r for r in appends if r["kind"] == kind]
        left.plot([r["batch"] for r in pts], [r["records_per_s"] for r in pts], marker="o",
                  color=f"C{i}", label=kind)  # fmt: skip
    left.set_xscale("log")
    left.set_yscale("log")
    compact_log_ticks(left.xaxis)
    compact_log_ticks(left.yaxis)
    left.set_xlabel("records per batch (one fsync each)")
    left.set_ylabel("records / s")
    left.set_title("durable appends")
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    names, x = list(phases), np.arange(len(phases))
    for j, key in enumerate(("batch_qps", "single_qps_1thread")):
        bars = right.bar(x + (j - 0.5) * 0.38, [phases[p][key] for p in names], 0.38, label=key)
        if j == 0:
            for bar, p in zip(bars, names, strict=True):
                label, xy = f"R@10 {phases[p]['recall_at_10']:.3f}", (bar.get_x(), bar.get_height())
                right.annotate(label, xy, fontsize=8, xytext=(0, 3), textcoords="offset points")
    right.set_xticks(x, [p.replace("_", "\n") for p in names])
    right.set_ylabel("queries / s (median)")
    right.set_title(f"search, {CHURN:.0%} deleted + re-inserted")
    right.legend()
    fig.suptitle(f"live slot over {n:,} vectors ({source})")
    return fig


def main(
    n: Annotated[int, typer.Option(help="catalogue size")] = 1_000_000,
    dim: Annotated[int, typer.Option(help="vector dim")] = 64,
    kind: Annotated[str, typer.Option(help="index kind (IndexConfig.kind)")] = "ivf",
    nprobe: Annotated[int, typer.Option(help="IVF cells probed")] = 32,
    queries: Annotated[int, typer.Option(help="queries per QPS / recall figure")] = 1000,
    repeats: Annotated[int, typer.Option(help="timings per QPS figure (median)")] = 3,
    threads: Annotated[int, typer.Option(help="FAISS / BLAS threads")] = 2,
    tmp_dir: Annotated[Path | None, typer.Option(help="where the slots go")] = None,
) -> None:
    """Measure a live slot and write results/live_slot.{json,png}."""
    set_faiss_threads(threads)
    cfg = replace(IndexConfig(), kind=kind, nprobe=nprobe)
    vectors, q, items, source = catalogue(n, dim, queries)
    truth = items["job_id"].to_numpy()[exact_topk(vectors, q, K)[1]]
    results: dict[str, Any] = {"n_vectors": n, "dim": dim, "source": source}

    def measure(search: Callable[[np.ndarray, int], Any]) -> dict[str, float]:
        return {**qps(search, q, repeats, threads), "recall_at_10": recall(search, q, truth)}

    with tempfile.TemporaryDirectory(prefix="ebr-bench-live-", dir=tmp_dir) as tmp:
        slots = Path(tmp)
        build_s, base = timed(lambda: write_slot(slots, "base", vectors, items, "v1", cfg))
        results["build_seconds"] = round(build_s, 2)
        results["index"] = load_slot(base, verify=False).manifest["index"]
        # Throughput on a hard-linked copy (slot files are immutable), so its log stays apart.
        copy = Path(shutil.copytree(base, slots / "copy", copy_function=os.link))
        with open_live(copy, verify=False) as live:
            appends = append_rate(live, vectors, items, "upsert")
            appends += append_rate(live, vectors, items, "delete")
            log_records = live.stats()["lsn"]
        replay_s, reopened = timed(lambda: open_live(copy, verify=False, writable=False))
        results["appends"] = appends
        results["replay"] = {"records": log_records, "open_seconds": round(replay_s, 3),
                             "snapshot_load_seconds": round(timed(
                                 lambda: load_slot(copy, verify=False))[0], 3)}  # fmt: skip
        assert reopened.stats()["lsn"] == log_records, "replay lost acknowledged records"

        phases: dict[str, dict] = {}
        live = open_live(base, verify=False)
        phases["before"] = measure(live.search)
        churn = np.random.default_rng(2).choice(n, int(n * CHURN), replace=False)
        t0 = time.perf_counter()
        for rows in np.array_split(churn, max(1, len(churn) // 1000)):
            live.delete(items["job_id"].to_numpy()[rows])
        for rows in np.array_split(churn, max(1, len(churn) // 1000)):
            live.upsert(items.iloc[rows], vectors[rows])
        results["churn_seconds"] = round(time.perf_counter() - t0, 2)
        phases["live_after_churn"] = measure(live.search)
        compact_s, path = timed(lambda: fold_into_slot(live, slots, "compacted", cfg))
        compacted = open_live(path, verify=False)
        phases["compacted"] = measure(compacted.search)
        fresh_s, fresh_path = timed(lambda: write_slot(slots, "fresh", vectors, items, "v1", cfg))
        # The served path (a read-only live slot, as serving opens it), not the raw index.
        phases["fresh_build"] = measure(open_live(fresh_path, verify=False, writable=False).search)
        results.update(compact_seconds=round(compact_s, 2), fresh_build_seconds=round(fresh_s, 2))
        live.close()
        compacted.close()
    for name, phase in phases.items():
        print(name, phase, flush=True)
    for phase in phases.values():  # the machines are shared: ratios within one run compare
        for key in ("batch_qps", "single_qps_1thread"):
            phase[f"{key}_ratio_vs_before"] = round(phase[key] / phases["before"][key], 3)
    results["search"] = phases
    for name in ("live_after_churn", "compacted"):
        results[f"recall_gap_{name}_vs_fresh"] = round(
            phases[name]["recall_at_10"] - phases["fresh_build"]["recall_at_10"], 4
        )
    params = {"queries": queries, "k": K, "repeats": repeats, "churn": CHURN,
              "append_batches": BATCHES, "index_config": asdict(cfg)}  # fmt: skip
    print(write_result(NAME, threads, params, results))
    print(save_figure(plot(appends, phases, n, source), NAME))


if __name__ == "__main__":
    typer.run(main)
