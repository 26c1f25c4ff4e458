"""Recall@10 vs QPS on 1M job embeddings: our FAISS index kinds against hnswlib and usearch.

    python -m benchmarks.ann_curves                 # 1M jobs: ~5 min once cached (+7.5 min once)
    python -m benchmarks.ann_curves --subset 50000  # the first 50k cached vectors (~1.5 min)

Vectors: a ``--n-jobs`` marketplace (``ebr.data.marketplace.generate``) embedded by the item tower
of a two-tower model trained for 1 epoch on a ``--train-jobs`` workspace
(``benchmarks.common.build_workspace``); queries: ``--queries`` held-out search sessions (query +
member, the last ``TrainConfig.eval_days`` days of the same marketplace) through the request
tower. Both are cached under ``--cache-dir`` (var/, gitignored), so reruns skip the ~7 min of
generating and encoding.

Every index answers the same queries as one batch at ``--threads`` FAISS/peer threads; QPS is
queries / the fastest of ``--repeats`` batches (``qps_median`` beside it); recall@10 is against
exact search. Curves: Flat (exact; both the forced-BLAS and the default scan path, the faster
is the baseline), IVF-Flat (nprobe), IVF-PQ fast-scan 4-bit + exact refine (nprobe x refine,
set through ``ebr.index.query.params``), FAISS HNSW (efSearch), and the peers hnswlib (ef) and
usearch (expansion_search) built with the same degree and build beam (``--ef-construction``
40, not IndexConfig's 80: three 1M-node graphs at 80 took ~8 min of the budget under load).
``ebr.index.build.tune`` then picks the slot setting for the best IVF-PQ variant, tuned on jittered
catalogue rows and on half the request queries, each judged on the other half.
Writes ``benchmarks/results/ann_curves.json`` and ``ann_curves.png``.
"""

from __future__ import annotations

import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import faiss
import numpy as np
import typer

from benchmarks.common import (
    REPO_ROOT,
    build_workspace,
    compact_log_ticks,
    pyplot,
    save_figure,
    timed,
    write_result,
)
from benchmarks.index_build import boundary_ties
from ebr.config import IndexConfig
from ebr.index.build.faiss_index import build_index, set_faiss_threads
from ebr.index.build.tune import RecallGateError, tune
from ebr.index.query.params import set_search_params
from ebr.index.query.vectors import check_vectors
from ebr.io import atomic_write_bytes, atomic_write_json
from ebr.metrics import EXACT_BLAS_THRESHOLD, exact_topk, recall_of

NAME = "ann_curves"
K = 10
TARGETS = (0.90, 0.95, 0.99)
EF = (16, 32, 64, 128, 256, 512)
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
REFINES = (1, 2, 4, 8, 16, 32, 64)  # tune() stops at 16; 32, 64 show what a wider grid buys
# nlist x PQ sub-quantizers (4-bit fast-scan, d=64): m=64 (IndexConfig's automatic choice,
# 32 bytes/vector) and m=32 (16 bytes) for comparison; m=16 topped out at recall@10 0.81 on a
# 50k subset even with 16x refine, so it is not measured.
IVFPQ_VARIANTS = ((1024, 64), (4096, 64), (1024, 32))
IVF_NLIST = 4096  # ~4 sqrt(n) at 1M, IndexConfig's own default rule
SATURATED = 0.999  # stop an effort sweep once recall is this close to exact
PLATEAU = 0.002  # ... or once doubling the effort gains less recall than this (PQ-bound)


# ---------------------------------------------------------------- vectors (cached)


def _encode_marketplace(
    n_jobs: int, train_jobs: int, n_queries: int, seed: int, tmp: Path
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(job vectors [n, d], request vectors [q, d], provenance) built from scratch."""
    from ebr.config import DataConfig, TrainConfig
    from ebr.data.marketplace import generate
    from ebr.data.pairs import eval_searches, time_split
    from ebr.model.artifact import load_item_tower, load_request_tower
    from ebr.model.features import member_records
    from ebr.model.infer import encode_jobs, encode_requests

    setup = build_workspace(tmp, train_jobs, epochs=1)
    item, mcfg, _ = load_item_tower(tmp / "models" / "v1")
    request, _, _ = load_request_tower(tmp / "models" / "v1")
    gen_s, mp = timed(lambda: generate(DataConfig(n_jobs=n_jobs, seed=seed)))
    chunk = 50_000  # records as dicts cost ~1 KiB each: convert a slice at a time

    def encode_all() -> np.ndarray:
        return np.concatenate(
            [
                encode_jobs(item, mp.jobs.iloc[i : i + chunk].to_dict("records"), mcfg)
                for i in range(0, len(mp.jobs), chunk)
            ]
        )

    enc_s, jobs = timed(encode_all)
    _, held = time_split(mp.impressions, TrainConfig().eval_days)
    searches = eval_searches(held, with_query=True)
    rows = np.random.default_rng(seed).choice(len(searches), n_queries, replace=False)
    picked = searches.iloc[np.sort(rows)]
    members = member_records(mp.members[mp.members["member_id"].isin(picked["member_id"])])
    queries = encode_requests(
        request, picked["query"].tolist(), [members[int(m)] for m in picked["member_id"]], mcfg
    )
    meta = {
        "n_jobs": len(jobs),
        "n_queries": len(queries),
        "dim": int(jobs.shape[1]),
        "train_workspace": setup,
        "generate_seconds": round(gen_s, 1),
        "encode_seconds": round(enc_s, 1),
        "queries": "held-out search sessions (query + member) through the request tower",
    }
    return jobs, queries, meta


def cached_vectors(
    cache_dir: Path, n_jobs: int, train_jobs: int, n_queries: int, seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Job vectors [n, d] and request vectors [q, d] (float32, unit rows), cached on disk."""
    folder = cache_dir / f"jobs{n_jobs}-train{train_jobs}-q{n_queries}-seed{seed}"
    files = (folder / "jobs.npy", folder / "requests.npy", folder / "meta.json")
    if not all(f.is_file() for f in files):
        with tempfile.TemporaryDirectory() as tmp:
            jobs, queries, meta = _encode_marketplace(
                n_jobs, train_jobs, n_queries, seed, Path(tmp)
            )
        atomic_write_bytes(files[0], _npy_bytes(jobs))
        atomic_write_bytes(files[1], _npy_bytes(queries))
        atomic_write_json(files[2], meta)  # written last: its presence marks a complete cache
    meta = json.loads(files[2].read_text())
    jobs = check_vectors(np.load(files[0]), "job vectors")
    queries = check_vectors(np.load(files[1]), "request vectors")
    return jobs, queries, {**meta, "cache": str(folder)}


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32))
    return buf.getvalue()


# ---------------------------------------------------------------- measuring


Searcher = Callable[[], np.ndarray]  # one batch search -> ids [q, K]


def batch_seconds(search: Searcher, repeats: int) -> tuple[list[float], np.ndarray]:
    """(wall seconds of ``repeats`` batch searches, the ids [q, k] the last one found)."""
    runs = [timed(search) for _ in range(repeats)]
    return [t for t, _ in runs], runs[-1][1]


def point(
    params: dict[str, Any], search: Searcher, truth: np.ndarray, repeats: int
) -> dict[str, Any]:
    """One curve point: params, recall@10 vs ``truth`` [q, 10], QPS.

    ``qps`` uses the fastest batch: on a shared machine other load only ever slows a run (the
    same setting measured 3x apart minutes apart), so the minimum is the reproducible figure;
    ``qps_median`` is kept beside it.
    """
    secs, found = batch_seconds(search, repeats)
    return {
        **params,
        "recall_at_10": round(recall_of(found, truth), 4),
        "qps": round(len(truth) / min(secs), 1),
        "qps_median": round(len(truth) / statistics.median(secs), 1),
    }


@dataclass(frozen=True)
class Bench:
    """What every curve is measured on."""

    x: np.ndarray  # [n, d] float32 job vectors (unit rows)
    q: np.ndarray  # [q, d] float32 request vectors
    truth: np.ndarray  # [q, K] exact top-K row ids
    repeats: int  # batch timings per point (median)
    threads: int
    min_qps: float = 0.0  # exact search's QPS: an effort sweep slower than this stops


def effort_sweep(
    b: Bench, values: Sequence[int], apply: Callable[[int], dict[str, Any]], search: Searcher
) -> list[dict[str, Any]]:
    """Points for rising effort ``values`` (nprobe, ef); stops once recall saturates or stops
    rising, or QPS falls below exact search's (measuring further only costs time)."""
    out: list[dict[str, Any]] = []
    for v in values:
        out.append(point(apply(v), search, b.truth, b.repeats))
        recall = out[-1]["recall_at_10"]
        flat = len(out) >= 2 and recall - out[-2]["recall_at_10"] < PLATEAU
        if recall >= SATURATED or flat or out[-1]["qps"] < b.min_qps:
            break
    return out


def best_qps(points: Sequence[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The fastest point with recall@10 >= ``target`` (None if no point reaches it)."""
    ok = [p for p in points if p["recall_at_10"] >= target]
    return max(ok, key=lambda p: p["qps"]) if ok else None


def faiss_search(index: faiss.Index, q: np.ndarray) -> Searcher:
    return lambda: index.search(q, K)[1]


def curve(label: str, build_s: float, points: list[dict[str, Any]]) -> dict[str, Any]:
    return {"label": label, "build_seconds": round(build_s, 1), "points": points}


# ---------------------------------------------------------------- curves


def flat_curve(b: Bench) -> dict[str, Any]:
    """Exact search on both FAISS paths: GEMM (forced, as ``exact_topk`` does) and the default
    SIMD scan. The faster one is the baseline: GEMM won 5x on 400k x 50 (STACK.md), but at 1M
    rows the top-k selection over its 10^9 scores can cost more than the scan saves."""
    build_s, (index, _) = timed(lambda: build_index(b.x, IndexConfig(kind="flat")))
    previous = faiss.cvar.distance_compute_blas_threshold
    pts = []
    try:
        for path, threshold in (("blas", EXACT_BLAS_THRESHOLD), ("scan", previous)):
            faiss.cvar.distance_compute_blas_threshold = threshold
            pts.append(point({"path": path}, faiss_search(index, b.q), b.truth, b.repeats))
    finally:
        faiss.cvar.distance_compute_blas_threshold = previous
    return curve("Flat (exact)", build_s, pts)


def ivf_curve(b: Bench) -> dict[str, Any]:
    build_s, (index, info) = timed(
        lambda: build_index(b.x, IndexConfig(kind="ivf", nlist=IVF_NLIST))
    )

    def apply(p: int) -> dict[str, Any]:
        set_search_params(index, {"nprobe": p})
        return {"nprobe": p}

    return curve(
        info["factory"], build_s, effort_sweep(b, NPROBES, apply, faiss_search(index, b.q))
    )


def ivfpq_curve(b: Bench, cfg: IndexConfig) -> tuple[dict[str, Any], faiss.Index]:
    """nprobe x refine grid of one IVF-PQ variant; also returns the index (for tuning)."""
    build_s, (index, info) = timed(lambda: build_index(b.x, cfg))
    pts: list[dict[str, Any]] = []
    for r in REFINES:

        def apply(p: int, r: int = r) -> dict[str, Any]:
            set_search_params(index, {"nprobe": p, "refine": r})
            return {"nprobe": p, "refine": r}

        pts += effort_sweep(b, NPROBES, apply, faiss_search(index, b.q))
    return curve(info["factory"], build_s, pts), index


def faiss_hnsw_curve(b: Bench, m: int, ef_c: int) -> dict[str, Any]:
    cfg = IndexConfig(kind="hnsw", hnsw_m=m, ef_construction=ef_c)
    build_s, (index, info) = timed(lambda: build_index(b.x, cfg))

    def apply(ef: int) -> dict[str, Any]:
        set_search_params(index, {"ef_search": ef})
        return {"ef_search": ef}

    pts = effort_sweep(b, EF, apply, faiss_search(index, b.q))
    return curve(f"faiss {info['factory']}", build_s, pts)


def hnswlib_curve(b: Bench, m: int, ef_c: int) -> dict[str, Any]:
    import hnswlib

    index = hnswlib.Index(space="ip", dim=b.x.shape[1])

    def build() -> None:
        index.init_index(max_elements=len(b.x), M=m, ef_construction=ef_c, random_seed=3)
        index.add_items(b.x, np.arange(len(b.x)), num_threads=b.threads)

    build_s, _ = timed(build)

    def apply(ef: int) -> dict[str, Any]:
        index.set_ef(ef)
        return {"ef_search": ef}

    def search() -> np.ndarray:
        return index.knn_query(b.q, k=K, num_threads=b.threads)[0].astype(np.int64)

    return curve(f"hnswlib M{m}", build_s, effort_sweep(b, EF, apply, search))


def usearch_curve(b: Bench, m: int, ef_c: int) -> dict[str, Any]:
    from usearch.index import Index

    # f32 storage: the precision every other index here uses (usearch may pick f16 itself).
    index = Index(ndim=b.x.shape[1], metric="ip", dtype="f32", connectivity=m, expansion_add=ef_c)
    build_s, _ = timed(lambda: index.add(np.arange(len(b.x)), b.x, threads=b.threads))

    def apply(ef: int) -> dict[str, Any]:
        index.expansion_search = ef  # type: ignore[misc]  # the setter exists; stubs miss it
        return {"ef_search": ef}

    def search() -> np.ndarray:
        return np.asarray(index.search(b.q, K, threads=b.threads).keys, dtype=np.int64)

    return curve(f"usearch M{m}", build_s, effort_sweep(b, EF, apply, search))


# ---------------------------------------------------------------- report


def summarise(curves: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Best QPS per curve at each target recall, the headline ratios, and build times."""
    flat_qps = max(p["qps"] for p in curves["flat"]["points"])
    ours = [n for n in curves if n.startswith(("ivf", "faiss_hnsw"))]
    ivfpq = [n for n in curves if n.startswith("ivfpq")]
    peers = [n for n in curves if n in ("hnswlib", "usearch")]

    def best(names: Sequence[str], target: float) -> dict[str, Any] | None:
        cands = [(n, best_qps(curves[n]["points"], target)) for n in names]
        found = [(n, p) for n, p in cands if p is not None]
        if not found:
            return None
        n, p = max(found, key=lambda np_: np_[1]["qps"])
        return {"curve": n, "label": curves[n]["label"], **p}

    out: dict[str, Any] = {"flat_qps": round(flat_qps, 1), "best_at": {}}
    for t in TARGETS:
        row: dict[str, Any] = {}
        for group, names in (("ivfpq", ivfpq), ("ours", ours), ("peers", peers)):
            b = best(names, t)
            row[group] = b
            if b is not None:
                b["ratio_vs_flat"] = round(b["qps"] / flat_qps, 1)
        if row["ours"] and row["peers"]:
            row["ours_vs_best_peer"] = round(row["ours"]["qps"] / row["peers"]["qps"], 2)
        for name in curves:
            b = best_qps(curves[name]["points"], t)
            row.setdefault("per_curve_qps", {})[name] = round(b["qps"], 1) if b else None
        out["best_at"][f"{t:.2f}"] = row
    out["build_seconds"] = {n: c["build_seconds"] for n, c in curves.items()}
    out["targets"] = {
        "ivfpq_x_flat_at_0.95": 20,
        "ivfpq_x_flat_at_0.90": 50,
        "met_0.95": _ratio(out, "0.95") >= 20,
        "met_0.90": _ratio(out, "0.90") >= 50,
    }
    return out


def _ratio(summary: dict[str, Any], target: str) -> float:
    b = summary["best_at"][target]["ivfpq"]
    return float(b["ratio_vs_flat"]) if b else 0.0


def plot(curves: dict[str, dict[str, Any]], n: int, nq: int, threads: int) -> Any:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 6.5))
    for i, (name, c) in enumerate(curves.items()):
        pts = c["points"]
        if name.startswith("ivfpq"):
            # Only the upper envelope: the nprobe x refine grid is a cloud, the frontier is
            # what a tuned slot gets.
            pts = sorted(pts, key=lambda p: -p["qps"])
            frontier, top = [], -1.0
            for p in pts:
                if p["recall_at_10"] > top:
                    frontier.append(p)
                    top = p["recall_at_10"]
            pts = frontier
        x, y = [p["qps"] for p in pts], [p["recall_at_10"] for p in pts]
        flat = name == "flat"
        ax.plot(x, y, marker="*" if flat else "o", ms=14 if flat else 5, color=f"C{i}",
                label=f"{c['label']} (build {c['build_seconds']:.0f} s)")  # fmt: skip
        for p in pts if flat else []:
            ax.annotate(p["path"], (p["qps"], p["recall_at_10"]), textcoords="offset points",
                        xytext=(-6, -14), fontsize=8)  # fmt: skip
    for t in (0.90, 0.95):
        ax.axhline(t, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    compact_log_ticks(ax.xaxis)
    ax.set_xlabel(f"queries / s (one batch of {nq:,}, {threads} threads, fastest of repeats)")
    ax.set_ylabel("recall@10 vs exact")
    ax.set_ylim(0.7, 1.005)  # below 0.7 no setting is of use; the full sweep is in the JSON
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(f"ANN over {n:,} job embeddings (IVF-PQ: nprobe x refine frontier)")
    return fig


def tune_report(b: Bench, label: str, index: faiss.Index, cfg: IndexConfig) -> dict[str, Any]:
    """What a slot's tuner picks for ``index`` at the default target, tuned on jittered
    catalogue rows (the default) and on half of the request queries, each judged on the other
    half of the requests: how far the jittered-row gate is from what serving sees."""
    half = len(b.q) // 2
    held = replace(b, q=b.q[half:], truth=b.truth[half:])
    out: dict[str, Any] = {"index": label, "target_recall": cfg.target_recall}
    runs: tuple[tuple[str, np.ndarray | None], ...] = (
        ("jittered_rows", None),
        ("requests", b.q[:half]),
    )
    for name, tune_q in runs:
        t0 = time.perf_counter()
        try:
            tuned = tune(index, b.x, cfg, threads=b.threads, queries=tune_q)
        except RecallGateError as e:  # a variant below the target is a result, not a crash
            best = max(e.sweep, key=lambda x: x["recall"], default=None)
            out[f"tuned_on_{name}"] = {
                "chosen": None,
                "missed_target": str(e),
                "best_setting": best,
                "settings_measured": len(e.sweep),
                "tune_seconds": round(time.perf_counter() - t0, 1),
            }
            continue
        tune_s = time.perf_counter() - t0
        got = point({}, faiss_search(index, held.q), held.truth, b.repeats)
        out[f"tuned_on_{name}"] = {
            "chosen": tuned["chosen"],
            "tuner_recall_at_10": round(tuned["recall_at_10"], 4),
            "held_out_request_recall_at_10": got["recall_at_10"],
            "held_out_request_qps": got["qps"],
            "settings_measured": len(tuned["sweep"]),
            "tune_seconds": round(tune_s, 1),
        }
    return out


def main(
    n_jobs: Annotated[int, typer.Option(help="jobs embedded and indexed")] = 1_000_000,
    train_jobs: Annotated[
        int, typer.Option(help="jobs in the 1-epoch training workspace")
    ] = 20_000,
    queries: Annotated[int, typer.Option(help="held-out request embeddings")] = 1000,
    repeats: Annotated[int, typer.Option(help="batch timings per point (median)")] = 3,
    threads: Annotated[int, typer.Option(help="FAISS / peer threads")] = 2,
    hnsw_m: Annotated[int, typer.Option(help="HNSW degree for faiss, hnswlib, usearch")] = 32,
    ef_construction: Annotated[int, typer.Option(help="HNSW build beam (all three)")] = 40,
    peers: Annotated[bool, typer.Option(help="also build hnswlib and usearch")] = True,
    seed: Annotated[int, typer.Option(help="marketplace seed")] = 7,
    subset: Annotated[int, typer.Option(help="index only the first N vectors (0: all)")] = 0,
    cache_dir: Annotated[Path, typer.Option(help="vector cache")] = REPO_ROOT
    / "var"
    / "bench-cache",
) -> None:
    """Measure every curve and write results/ann_curves.{json,png}."""
    if min(n_jobs, train_jobs, queries, repeats, threads) < 1:
        raise typer.BadParameter("sizes, repeats and threads must be >= 1")
    set_faiss_threads(threads)
    load_s, (x, q, source) = timed(
        lambda: cached_vectors(cache_dir, n_jobs, train_jobs, queries, seed)
    )
    if subset:
        x = x[:subset]  # a quick look at the same vectors; truth is recomputed for the subset
    print(f"vectors {x.shape}, queries {q.shape} in {load_s:.0f} s", flush=True)
    _, truth = exact_topk(x, q, K)
    b = Bench(x=x, q=q, truth=truth, repeats=repeats, threads=threads)
    curves: dict[str, dict[str, Any]] = {}

    def add(name: str, c: dict[str, Any]) -> None:
        curves[name] = c
        best = best_qps(c["points"], 0.95)
        print(f"{name}: {c['label']} build {c['build_seconds']} s, best@0.95 {best}", flush=True)

    add("flat", flat_curve(b))
    b = replace(b, min_qps=max(p["qps"] for p in curves["flat"]["points"]))
    add("ivf", ivf_curve(b))
    best_pq: tuple[float, str, faiss.Index, IndexConfig] | None = None
    for nlist, m in IVFPQ_VARIANTS:
        cfg = IndexConfig(kind="ivfpq", nlist=nlist, pq_m=m, pq_nbits=4)
        c, index = ivfpq_curve(b, cfg)
        add(f"ivfpq_{nlist}_m{m}", c)
        top = best_qps(c["points"], 0.95)
        if top is not None and (best_pq is None or top["qps"] > best_pq[0]):
            best_pq = (top["qps"], c["label"], index, cfg)
        del index  # ~0.3 GiB each; keep only the best variant for the tuner
    add("faiss_hnsw", faiss_hnsw_curve(b, hnsw_m, ef_construction))
    if peers:
        add("hnswlib", hnswlib_curve(b, hnsw_m, ef_construction))
        add("usearch", usearch_curve(b, hnsw_m, ef_construction))

    results: dict[str, Any] = {
        "n_vectors": len(x),
        "dim": int(x.shape[1]),
        "source": source,
        "exact_ties_at_10th": boundary_ties(x, q),
        "summary": summarise(curves),
        "curves": curves,
    }
    if best_pq is not None:
        results["tune"] = tune_report(b, *best_pq[1:])
        print("tune", results["tune"], flush=True)
    params = {
        "queries": len(q),
        "k": K,
        "repeats": repeats,
        "hnsw_m": hnsw_m,
        "ef_construction": ef_construction,
        "nprobes": list(NPROBES),
        "refines": list(REFINES),
        "ef_search": list(EF),
        "ivfpq_variants": [list(v) for v in IVFPQ_VARIANTS],
        "ivf_nlist": IVF_NLIST,
        "subset": subset,
    }
    print(write_result(NAME, threads, params, results))
    print(save_figure(plot(curves, len(x), len(q), threads), NAME))
    print(json.dumps(results["summary"], indent=1))


if __name__ == "__main__":
    typer.run(main)
