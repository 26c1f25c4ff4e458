"""Search cost as a slot takes live changes (issue 25, "no cliffs"): catalogue sizes x the share
of the slot the stream changed, one query per call on one FAISS thread (as a replica runs).

    python -m benchmarks.churn_sweep [--sizes 5000,20000,100000,1000000] [--changes 0,0.01,0.1]

For each size a slot is built with the default ``IndexConfig`` (IVF-PQ fast-scan + refine,
tuned to recall@10 0.95 on jittered rows), over the vectors ``benchmarks.live_slot`` uses (real
job embeddings when cached, else seeded random unit vectors). A change share c deletes c/2 of
the jobs and upserts c/2 (existing jobs with new vectors, superseding their snapshot rows), in
the slot's live log, on a hard-linked copy per share. Per (size, share): p50 and p95 of a
single-query ``retrieve`` (the live view: snapshot minus tombstones, plus the delta), the
planner's strategy, and recall@10 against exact search over the live rows; the ratio of each
p50 to the same size unchanged. Target: <= 1.5x at 10% changed, at every size.

Writes benchmarks/results/churn_sweep.json and churn_sweep.png.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from benchmarks.common import compact_log_ticks, pyplot, save_figure, write_result
from benchmarks.live_slot import catalogue
from ebr.config import IndexConfig
from ebr.index.build.faiss_index import set_faiss_threads
from ebr.index.build.writer import write_slot
from ebr.index.live.slot import open_live
from ebr.index.query.retrieve import retrieve
from ebr.metrics import exact_topk

NAME = "churn_sweep"
K = 10
TARGET = 1.5


def _changed(vectors: np.ndarray, share: float, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(rows to delete, rows to upsert with new vectors): share/2 of the catalogue each."""
    n = len(vectors)
    rows = np.random.default_rng(seed).choice(n, int(n * share), replace=False)
    return rows[: len(rows) // 2], rows[len(rows) // 2 :]


def _measure(slot: Path, queries: np.ndarray, truth: np.ndarray, calls: int) -> dict[str, Any]:
    live = open_live(slot, verify=False, writable=False)
    view = live.view()
    times, found, strategies = [], [], {}
    for i in range(calls):
        q = queries[i % len(queries) : i % len(queries) + 1]
        t0 = time.perf_counter()
        hits = retrieve(view, q, K)
        times.append((time.perf_counter() - t0) * 1e3)
        if i < len(queries):
            found.append(hits.job_ids[0])
            name = str(hits.plan.get("strategy"))
            strategies[name] = strategies.get(name, 0) + 1
    live.close()
    got = np.stack(found)
    recall = np.mean([len(np.intersect1d(t, f)) / K for t, f in zip(truth, got, strict=True)])
    times = times[len(times) // 10 :]  # the first calls warm caches
    return {"p50_ms": round(statistics.median(times), 4),
            "p95_ms": round(float(np.percentile(times, 95)), 4),
            "recall_at_10": round(float(recall), 4), "strategies": strategies}  # fmt: skip


def main(
    sizes: Annotated[str, typer.Option(help="catalogue sizes")] = "5000,20000,100000,1000000",
    changes: Annotated[str, typer.Option(help="shares of the slot changed")] = "0,0.01,0.1",
    queries: Annotated[int, typer.Option(help="queries (recall) per cell")] = 300,
    calls: Annotated[int, typer.Option(help="timed single-query calls per cell")] = 1500,
    tmp_dir: Annotated[Path | None, typer.Option(help="where the slots go")] = None,
) -> None:
    set_faiss_threads(1)
    shares = [float(c) for c in changes.split(",")]
    results: dict[str, Any] = {"cells": []}
    for n in (int(s) for s in sizes.split(",")):
        vectors, q, items, source = catalogue(n, 64, queries)
        results.setdefault("source", source)
        with tempfile.TemporaryDirectory(prefix="ebr-churn-", dir=tmp_dir) as tmp:
            t0 = time.perf_counter()
            base = write_slot(Path(tmp), "base", vectors, items, "v1", IndexConfig())
            build_s = round(time.perf_counter() - t0, 1)
            baseline = None
            for share in shares:
                slot = Path(shutil.copytree(base, Path(tmp) / f"c{share}", copy_function=os.link))
                gone, moved = _changed(vectors, share)
                live_vecs = vectors.copy()
                if len(moved):
                    noise = np.random.default_rng(3).standard_normal((len(moved), 64))
                    fresh = vectors[moved] + 0.3 * noise.astype(np.float32) / 8
                    live_vecs[moved] = fresh / np.linalg.norm(fresh, axis=1, keepdims=True)
                with open_live(slot, verify=False) as live:
                    for part in np.array_split(gone, max(1, len(gone) // 1000)):
                        if len(part):
                            live.delete(items["job_id"].to_numpy()[part])
                    for part in np.array_split(moved, max(1, len(moved) // 1000)):
                        if len(part):
                            live.upsert(items.iloc[part], live_vecs[part])
                alive = np.ones(n, dtype=bool)
                alive[gone] = False
                ids = items["job_id"].to_numpy()[alive]
                truth = ids[exact_topk(live_vecs[alive], q, K)[1]]
                cell = {"n": n, "changed": share, "deleted": len(gone), "upserted": len(moved),
                        "build_s": build_s, **_measure(slot, q, truth, calls)}  # fmt: skip
                baseline = baseline or cell["p50_ms"]
                cell["p50_ratio_vs_unchanged"] = round(cell["p50_ms"] / baseline, 3)
                print(cell, flush=True)
                results["cells"].append(cell)
    worst = {}
    for cell in results["cells"]:
        if cell["changed"] == max(shares):
            worst[cell["n"]] = cell["p50_ratio_vs_unchanged"]
    results["ratio_at_most_changed"] = worst
    results["target_met"] = all(r <= TARGET for r in worst.values())
    write_result(NAME, 1, {"sizes": sizes, "changes": changes, "queries": queries,
                           "calls": calls, "k": K, "target_ratio": TARGET}, results)  # fmt: skip
    _plot(results["cells"], shares)


def _plot(cells: list[dict[str, Any]], shares: list[float]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for share in shares:
        row = [c for c in cells if c["changed"] == share]
        ax.plot([c["n"] for c in row], [c["p50_ms"] for c in row], marker="o",
                label=f"{share:.0%} changed")  # fmt: skip
    ax.set_xscale("log")
    compact_log_ticks(ax.xaxis)
    ax.set_xlabel("jobs in the slot")
    ax.set_ylabel("single-query p50, ms (1 thread)")
    ax.set_title("search cost as the stream changes a slot")
    ax.legend()
    save_figure(fig, NAME)


if __name__ == "__main__":
    typer.run(main)
