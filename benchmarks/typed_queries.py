"""Typed queries (issue 9): EBR vs BM25 vs hybrid on searches the model never trained on.

    python -m benchmarks.typed_queries [--size 20000] [--epochs 6]

On the demo marketplace (20,000 jobs over 500 ESCO occupations, cached under
var/bench-cache/ and shared with benchmarks.models), trains what ``build_platform`` trains
(the member-interest model, then the composite multi-task two-tower co-trained with it) once
per version of the training code (the cache key hashes ebr/config.py, ebr/data/ and
ebr/model/), then runs the evaluation report (ebr.eval.report.evaluate_marketplace) with its
typed-query section (ebr.eval.typed): ESCO alternative labels, single title words, misspelled
and reordered titles, everyday searches and queries with no known word; precision@10,
recall@100 and MRR overall, per kind and per occupation-frequency bucket, for EBR (exact,
request tower without a member), BM25 (the slot's term index) and the served hybrid, beside
the log-based numbers; a sweep of hybrid fusions (reciprocal rank, min-max scores) and EBR
weights on both; and the in-process encode latency of one request (cold caches, one thread),
with the MiniLM sentence encoder's own cost beside it.

Targets (issue 9): EBR precision@10 >= BM25's overall and in every frequency bucket; hybrid
>= max(EBR, BM25) + 0.05 overall; encode p50 <= 2 ms. A missed target is a recorded result.
Writes
benchmarks/results/typed_queries.json and typed_queries.png (~4 min from a clean clone at
20,000 jobs on 2 cores, ~1 min once the model is cached).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from benchmarks.common import REPO_ROOT, TABLES, pyplot, save_figure, write_result

CACHE = REPO_ROOT / "var" / "bench-cache"
CODE = ("ebr/config.py", "ebr/data", "ebr/model")  # what decides the trained model
METHODS = ("ebr", "bm25", "hybrid", "ideal")


def code_hash() -> str:
    """Short sha256 of the training code, so a cached model never outlives its code."""
    h = hashlib.sha256()
    for root in CODE:
        path = REPO_ROOT / root
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(f.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def _data(size: int, seed: int) -> Path:
    """The marketplace tables (the same cache folder benchmarks.models uses)."""
    from ebr.config import DataConfig
    from ebr.data.marketplace import write_marketplace

    path = CACHE / f"market-{size}-seed{seed}"
    if not (path / "impressions.parquet").is_file():
        write_marketplace(DataConfig(n_jobs=size, seed=seed), path)
    return path


def _models(data: Path, root: Path, epochs: int, catalogue: float = 0.0) -> dict[str, Any]:
    """Interest model interest/models/v1 and composite models/v1 under ``root``, trained as
    the platform's tasks train them (skipped when already there); returns their timings."""
    import pandas as pd

    from ebr.config import ModelConfig, TrainConfig, Workspace
    from ebr.model.artifact import save_model
    from ebr.model.interest import train_interest
    from ebr.model.train import train_with_interest
    from ebr.text import training_vocabulary
    from ebr.versions import META_FILE, read_meta, version_paths

    ws = Workspace(root)
    paths = version_paths(ws, "v1")
    if not (paths.model / META_FILE).is_file():
        t = {n: pd.read_parquet(data / f"{n}.parquet") for n in TABLES}
        tables = (t["jobs"], t["members"], t["impressions"])
        tcfg = TrainConfig(epochs=epochs, catalogue_pairs=catalogue)
        t0 = time.perf_counter()
        interest, imetrics = train_interest(*tables, tcfg)
        idir = save_model(interest, ws.interest_models, "v1", {"metrics": imetrics})
        t1 = time.perf_counter()
        model, metrics, lineage = train_with_interest(*tables, idir, ModelConfig(), tcfg)
        meta = {"train": asdict(tcfg), "metrics": metrics, "lineage": lineage}
        meta["train_wall_s"] = {"interest": t1 - t0, "composite": time.perf_counter() - t1}
        save_model(model, ws.models, "v1", meta, training_vocabulary(*tables))
    meta = read_meta(paths.model)
    at100 = {k: v for k, v in meta["metrics"].items() if k.endswith("@100")}
    return {"train_wall_s": meta["train_wall_s"], **at100}


def _encode_latency(model: Any, mcfg: Any, texts: list[str], members: Any) -> dict[str, float]:
    """p50 / p99 ms of embedding one request in process (featurize + request tower), cold
    caches, anonymous and with a member profile; and of the MiniLM sentence encoder alone on
    one uncached query (what text_encoder hashed+minilm would add per request)."""
    import numpy as np
    import torch

    from ebr.model.features import _hash_text
    from ebr.model.infer import encode_requests
    from ebr.text import normalize

    torch.set_num_threads(1)  # a serving replica gets a fraction of a core
    _hash_text.cache_clear()
    normalize.cache_clear()
    profiles = members.to_dict("records")
    out: dict[str, float] = {}
    for name, member_of in (("anonymous", lambda i: None), ("member", lambda i: profiles[i])):
        ms = []
        for i, text in enumerate(texts):
            t0 = time.perf_counter()
            encode_requests(model.request, [text], [member_of(i % len(profiles))], mcfg)
            ms.append((time.perf_counter() - t0) * 1e3)
        out[f"{name}_p50_ms"] = round(float(np.percentile(ms, 50)), 3)
        out[f"{name}_p99_ms"] = round(float(np.percentile(ms, 99)), 3)
    try:
        from ebr.model.sentence import sentence_vectors

        sentence_vectors(["warm up the encoder"])
        ms = []
        for text in texts[:100]:
            t0 = time.perf_counter()
            sentence_vectors([f"{text} ?"])  # a string the memo has not seen
            ms.append((time.perf_counter() - t0) * 1e3)
        out["minilm_sentence_p50_ms"] = round(float(np.percentile(ms, 50)), 3)
    except ImportError:
        out["minilm_sentence_p50_ms"] = float("nan")
    return out


def _plot(typed: dict[str, Any], summary: dict[str, Any]) -> None:
    from ebr.eval.report import typed_bars
    from ebr.eval.typed_scores import typed_rows

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 4.8), width_ratios=(1.4, 1))
    typed_bars(ax1, typed)
    kinds = [(g[5:], v) for g, v in typed_rows(typed) if g.startswith("kind:")]
    scored = [(k, v) for k, v in kinds if k != "unknown"]
    for j, m in enumerate(("ebr", "bm25", "hybrid")):
        xs = [i + (j - 1) * 0.27 for i in range(len(scored))]
        ax2.bar(xs, [v[m]["p@10"] for _, v in scored], 0.27, label=m)
    ax2.set_xticks(range(len(scored)), [k for k, _ in scored], rotation=30, fontsize=8)
    ax2.set(ylim=(0, 1), ylabel="precision@10", title="typed queries by kind")
    ax2.legend(fontsize=7)
    t, p = summary["targets"], summary["p@10"]
    fig.suptitle(
        f"p@10 EBR {p['ebr']:.3f}, BM25 {p['bm25']:.3f}, hybrid {p['hybrid']:.3f} "
        f"(ideal {p['ideal']:.3f}); targets: EBR>=BM25 "
        f"overall {t['ebr_p@10_ge_bm25_overall']}, every bucket "
        f"{t['ebr_p@10_ge_bm25_every_bucket']}; hybrid>=best+0.05 "
        f"{t['hybrid_p@10_ge_best_plus_0.05']}",
        fontsize=9,
    )
    save_figure(fig, "typed_queries")


def main(
    size: Annotated[int, typer.Option(help="jobs in the marketplace (demo: 20,000)")] = 20_000,
    epochs: Annotated[int, typer.Option(help="training epochs (build_platform's default)")] = 6,
    seed: Annotated[int, typer.Option(help="marketplace seed")] = 7,
    query_seed: Annotated[int, typer.Option(help="seed of the typed-query draw")] = 0,
    per_occupation: Annotated[int, typer.Option(help="alternative labels per occupation")] = 2,
    catalogue_pairs: Annotated[
        float | None, typer.Option(help="TrainConfig.catalogue_pairs (default: its default)")
    ] = None,
) -> None:
    import pandas as pd

    from ebr.config import TrainConfig
    from ebr.data.esco import load_occupations
    from ebr.eval.report import evaluate_marketplace
    from ebr.eval.typed import typed_queries
    from ebr.eval.typed_scores import typed_rows
    from ebr.model.artifact import load_two_tower, load_vocabulary
    from ebr.model.interest import load_interest_snapshots

    data = _data(size, seed)
    cat = TrainConfig().catalogue_pairs if catalogue_pairs is None else catalogue_pairs
    root = CACHE / f"typed-{size}-seed{seed}-e{epochs}-c{cat:g}-{code_hash()}"
    for stale in CACHE.glob(f"typed-{size}-seed{seed}-e{epochs}-c{cat:g}-*"):
        if stale != root:  # models of older training code: never read again
            shutil.rmtree(stale)
    t0 = time.perf_counter()
    trained = _models(data, root, epochs, cat)
    t1 = time.perf_counter()
    t = {n: pd.read_parquet(data / f"{n}.parquet") for n in TABLES}
    tables, eval_days = (t["jobs"], t["members"], t["impressions"]), TrainConfig().eval_days
    model, mcfg, _ = load_two_tower(root / "models" / "v1")
    vocab = load_vocabulary(root / "models" / "v1")
    snaps = load_interest_snapshots(root / "interest" / "models" / "v1", *tables, eval_days)
    queries = typed_queries(
        t["jobs"], t["impressions"], load_occupations(), query_seed, per_occupation, vocab
    )
    report = evaluate_marketplace(
        model, mcfg, *tables, eval_days, interest=snaps, typed=queries, vocabulary=vocab
    )
    typed = report["typed"]
    summary = {
        "catalogue_pairs": cat,
        "p@10": {m: v["overall"]["p@10"] for m, v in typed["methods"].items()},
        "targets": typed["targets"],
        "table": {g: {m: v[m] for m in METHODS} for g, v in typed_rows(typed)},
        "log_based_search": report["search"]["methods"],
        "fusion_sweep": {
            "typed_p@10": typed["hybrid_p@10_by_ebr_weight"],
            "log_based_search_recall@100": report["search"]["hybrid_recall@100_by_ebr_weight"],
        },
        "eval_seconds": round(time.perf_counter() - t1, 1),
        "encode_latency": _encode_latency(
            model, mcfg, queries["query"].drop_duplicates().head(300).tolist(), t["members"]
        ),
        "model_seconds_this_run": round(t1 - t0, 1),
    }
    examples = queries.groupby("kind").head(5)[["query", "kind", "bucket_jobs", "in_training"]]
    write_result(
        "typed_queries",
        threads=2,
        params={
            "size": size,
            "epochs": epochs,
            "seed": seed,
            "query_seed": query_seed,
            "per_occupation": per_occupation,
            "code_hash": code_hash(),
        },  # fmt: skip
        results={
            "summary": summary,
            "typed": typed,
            "model": trained,
            "examples": examples.to_dict("records"),
        },
    )
    _plot(typed, summary)
    keys = ("p@10", "targets", "fusion_sweep", "encode_latency")
    print(json.dumps({k: summary[k] for k in keys}, indent=2))
    print("p@10 / recall@100 / mrr (not understood)")
    for group, vals in typed_rows(typed):
        cells = [
            f"{m} {v['p@10']:.3f}/{v['recall@100']:.3f}/{v['mrr']:.3f} ({v['not_understood']:.2f})"
            for m, v in vals.items()
            if m != "ideal"
        ]
        print(f"{group:18s}", "  ".join(cells), f"n={vals['ebr']['n']:.0f}")


if __name__ == "__main__":
    typer.run(main)
