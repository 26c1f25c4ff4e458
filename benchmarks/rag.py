"""The ESCO knowledge base as a RAG retriever (issue 24): recall@1, recall@10 and MRR@10 of
ebr (the packaged MiniLM), BM25 and hybrid on the same queries and the same slot.

    python -m benchmarks.rag [--workspace var/bench-rag/ws] [--rebuild]

Builds the corpus (``ebr.corpus.build``: 3,022 occupation articles, preferred label and
description) in its own workspace when it has none. The queries are the occupations'
alternative labels, which the indexed text never holds (``ebr.corpus.esco.queries``), each
with its occupation's article as the one relevant document. They are split in two halves by
a fixed seed: hybrid's weight of the encoder's list is swept on the *tune* half, and every
figure reported is measured on the *test* half, with the configured weight
(``CorpusSpec.ebr_weight``) and with the best weight of the tune half beside it.
Writes benchmarks/results/rag.json and rag.png (~4 min from a clean clone on 2 cores).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from benchmarks.common import REPO_ROOT, pyplot, save_figure, write_result

WORKSPACE = REPO_ROOT / "var" / "bench-rag" / "ws"
WEIGHTS = (0.25, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def run(
    workspace: Annotated[Path, typer.Option(help="where the corpus is built")] = WORKSPACE,
    rebuild: Annotated[bool, typer.Option(help="build the corpus again")] = False,
    seed: Annotated[int, typer.Option(help="the tune/test split")] = 0,
) -> dict[str, Any]:
    from dataclasses import replace

    from ebr.config import Workspace
    from ebr.corpus import corpus_spec
    from ebr.corpus.build import build_corpus, read_corpus_state
    from ebr.corpus.evaluate import evaluate_corpus

    ws, spec = Workspace(workspace), corpus_spec("esco")
    if rebuild and workspace.exists():
        shutil.rmtree(workspace)
    build_s = None
    if read_corpus_state(ws, "esco")["live"] is None:
        t0 = time.perf_counter()
        build_corpus(ws, spec)
        build_s = round(time.perf_counter() - t0, 1)
    queries = spec.load("queries")
    tune = queries.sample(frac=0.5, random_state=seed)
    test = queries.drop(tune.index)
    tuned = evaluate_corpus(ws, spec, queries=tune, hybrid_weights=WEIGHTS)
    best = max(WEIGHTS, key=lambda w: tuned["hybrid_sweep"][str(w)]["mrr@10"])
    result = evaluate_corpus(ws, spec, queries=test)
    with_best = evaluate_corpus(ws, replace(spec, ebr_weight=best), queries=test)
    result["retrievals"][f"hybrid (w={best}, tuned)"] = with_best["retrievals"]["hybrid"]
    result.update({
        "split": {"tune": len(tune), "test": len(test), "seed": seed},
        "tune_sweep": tuned["hybrid_sweep"], "best_tune_weight": best, "build_s": build_s,
    })  # fmt: skip
    write_result("rag", 1, {"corpus": "esco", "weights": list(WEIGHTS)}, result)
    _plot(result)
    print(json.dumps(result, indent=2))
    return result


def _plot(result: dict[str, Any]) -> None:
    plt = pyplot()
    fig, (ax, sweep) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(result["retrievals"])
    metrics = ("recall@1", "recall@10", "mrr@10")
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [result["retrievals"][name][m] for m in metrics]
        bars = ax.bar([j + i * width for j in range(len(metrics))], values, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(metrics))], metrics)
    ax.set_ylim(0, 1)
    ax.set_title(f"ESCO articles: {result['queries']} held-out alternative labels (test half)")
    ax.legend(fontsize=8, loc="upper left")
    ws = [float(w) for w in result["tune_sweep"]]
    sweep.plot(ws, [result["tune_sweep"][str(w)]["mrr@10"] for w in ws], marker="o")
    sweep.set_xlabel("hybrid: weight of the encoder's list")
    sweep.set_ylabel("MRR@10 (tune half)")
    sweep.set_title("hybrid weight sweep")
    save_figure(fig, "rag")


if __name__ == "__main__":
    typer.run(run)
