"""Offline evaluation report: EBR against BM25, popularity and a BM25+EBR hybrid.

    report = evaluate_marketplace(model, mcfg, jobs, members, impressions, eval_days=2)
    json_path, png_path = write_report(report, Path("var/eval"))

Held-out sessions are those of the last ``eval_days`` days (ebr.data.pairs.time_split, the
split training uses); EBR searches all jobs exactly, so the numbers measure the model, not
the ANN index.

Size: the held-out evaluation and its report (JSON, PNG, the Flyte Deck's HTML) are one
artifact; the methods it compares live in ``ebr.eval.ranking`` and ``ebr.metrics``.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ebr.config import TASK_OUTCOMES, ModelConfig, Workspace
from ebr.data.pairs import eval_searches, positive_pairs, time_split
from ebr.eval.bm25 import BM25Baseline
from ebr.eval.ranking import (
    fusion_sweep,
    hybrid_ranking,
    pad_scores,
    pad_to,
    popularity_ranking,
)
from ebr.eval.signed_in import evaluate_signed_in, search_by_intent
from ebr.eval.signed_in_path import Catalogue
from ebr.eval.signed_in_tables import intent_html, signed_in_bars, signed_in_html
from ebr.eval.typed import typed_queries
from ebr.eval.typed_scores import evaluate_typed, typed_rows
from ebr.index.query.fusion import HYBRID_EBR_WEIGHT_MEMBER
from ebr.io import atomic_write_bytes, atomic_write_json
from ebr.metrics import exact_topk, mrr, ndcg_at, recall_at
from ebr.model.infer import encode_jobs, encode_requests
from ebr.model.towers import TwoTower
from ebr.model.train import request_members
from ebr.text import Vocabulary, training_vocabulary

GRADES = {"apply": 3.0, "save": 2.0, "click": 1.0}  # graded relevance for ndcg@10_graded
BY_OUTCOME_K = 100  # per-outcome recall cutoff


def _metrics(
    ranked: np.ndarray,
    positives: Sequence[set[int]],
    gains: Sequence[dict[int, float]],
    ks: Sequence[int],
) -> dict[str, float]:
    """recall@k for every k, ndcg@10 (binary and graded) and mrr of one method."""
    out = {f"recall@{k}": v for k, v in recall_at(ranked, positives, ks).items()}
    out["ndcg@10"] = ndcg_at(ranked, positives, 10)
    out["ndcg@10_graded"] = ndcg_at(ranked, positives, 10, gains)
    out["mrr"] = mrr(ranked, positives)
    return out


def _session_labels(held: pd.DataFrame, sessions: pd.Series) -> pd.DataFrame:
    """Per session: the best outcome of each engaged job -> columns gains, apply, save, click."""
    pos = positive_pairs(held)
    pos = pos.assign(g=pos["outcome"].astype(str).map(GRADES))
    best = pos.groupby(["session_id", "job_id"])["g"].max().reset_index()
    by_sess = {
        s: dict(zip(df["job_id"].tolist(), df["g"].tolist(), strict=True))
        for s, df in best.groupby("session_id")
    }
    gains = [by_sess.get(s, {}) for s in sessions]
    cols: dict[str, list[Any]] = {"gains": gains}
    for name, g in GRADES.items():
        cols[name] = [{j for j, v in d.items() if v == g} for d in gains]
    return pd.DataFrame(cols)


def evaluate_marketplace(
    model: TwoTower,
    mcfg: ModelConfig,
    jobs: pd.DataFrame,
    members: pd.DataFrame,
    impressions: pd.DataFrame,
    eval_days: int,
    ks: Sequence[int] = (10, 50, 100, 500),
    interest: Mapping[pd.Timestamp, np.ndarray] | None = None,
    ann: Callable[[np.ndarray, int], np.ndarray] | None = None,
    typed: pd.DataFrame | None = None,
    vocabulary: Vocabulary | None = None,
) -> dict[str, Any]:
    """Every method's metrics on held-out search and JYMBII sessions, in one dict.

    Returns {"ks", "eval_days", "n_jobs", "search": task, "jymbii": task} where task is
    {"sessions": int, "methods": {method: {metric: float}}, "ebr_recall@100_by_outcome":
    {"apply"|"save"|"click": float}}. Methods: ebr, popularity, and for search bm25, hybrid.
    JYMBII sessions carry no query, so BM25 and the hybrid do not apply there (nor to a
    query-only tower). ``interest``: daily member-interest snapshots for a model that reads them
    (ebr.model.interest.load_interest_snapshots). ``ann``: (request vectors [q, d], k) ->
    job ids [q, k] (-1 padded) from the served ANN index (``ebr.eval.ranking.served_search``);
    adds the method ``ebr_ann`` beside the exact ``ebr``. ``typed``: typed queries
    (ebr.eval.typed.typed_queries) -> a "typed" section (``typed_scores.evaluate_typed``:
    EBR, BM25 and hybrid on queries the model never trained on), judged against
    ``vocabulary`` (default: the words of the three tables), and a "signed_in" section
    (``ebr.eval.signed_in``: the same queries sent by several members through the signed-in
    path); the search task's "methods_by_intent" splits its sessions by intent.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive cutoffs, got {ks}")
    k_max = max(ks[-1], BY_OUTCOME_K, 10)
    train_imp, held = time_split(impressions, eval_days)
    model.eval()
    ids = jobs["job_id"].to_numpy(np.int64)
    item_vecs = encode_jobs(model.item, jobs.to_dict("records"), mcfg)  # [n, dim]
    bm25: BM25Baseline | None = None
    report: dict[str, Any] = {"ks": ks, "eval_days": eval_days, "n_jobs": len(jobs)}
    for task, with_query in (("search", True), ("jymbii", False)):
        if not with_query and mcfg.request_inputs == "query":
            continue
        ev = eval_searches(held, with_query=with_query)
        if ev.empty:
            raise ValueError(f"no held-out {task} sessions with engagement in {eval_days} days")
        queries = [None if pd.isna(x) else str(x) for x in ev["query"]]
        positives = ev["positives"].tolist()
        labels = _session_labels(held, ev["session_id"])
        gains = labels["gains"].tolist()

        reqs = request_members(ev, members, interest)
        q = encode_requests(model.request, queries, reqs, mcfg, whens=ev["ts"].tolist())
        cosines, found = exact_topk(item_vecs, q, k_max, ids)
        ebr, ebr_scores = pad_to(found, k_max), pad_scores(cosines, k_max)  # [q, k_max]

        n = len(ev)
        sweeps: dict[str, Any] = {}
        methods = {
            "ebr": _metrics(ebr, positives, gains, ks),
            "popularity": _metrics(
                popularity_ranking(train_imp, ids, n, k_max), positives, gains, ks
            ),
        }
        if ann is not None:
            methods["ebr_ann"] = _metrics(pad_to(ann(q, k_max), k_max), positives, gains, ks)
        if with_query:
            bm25 = bm25 or BM25Baseline(jobs)
            texts = [q_ or "" for q_ in queries]
            bm_ids, bm_s = bm25.search_scored(texts, k_max)
            bm, bm_scores = pad_to(bm_ids, k_max), pad_scores(bm_s, k_max)
            coverage, scale = bm25.coverage(texts), bm25.attainable(texts)
            methods["bm25"] = _metrics(bm, positives, gains, ks)
            # Logged searches name their member: the served hybrid's personalised weight.
            hyb = hybrid_ranking(
                ebr,
                ebr_scores,
                bm,
                bm_scores,
                k_max,
                HYBRID_EBR_WEIGHT_MEMBER,
                bm25_coverage=coverage,
                bm25_scale=scale,
            )
            methods["hybrid"] = _metrics(hyb, positives, gains, ks)
            # Profile-consistent vs exploring searches, today's methods and the signed-in path.
            sweeps["methods_by_intent"] = search_by_intent(
                model, mcfg, Catalogue.of(jobs, item_vecs, bm25), ev, held, q, positives,
                {"ebr": ebr, "bm25": bm, "hybrid": hyb}, members,
            )  # fmt: skip
            sweeps["hybrid_recall@100_by_ebr_weight"] = fusion_sweep(
                (ebr, ebr_scores),
                (bm, bm_scores),
                k_max,
                partial(_recall_at_100, positives=positives),
                coverage,
                scale,
            )
        by_outcome = {
            name: recall_at(ebr, labels[name].tolist(), [BY_OUTCOME_K])[BY_OUTCOME_K]
            for name in GRADES
        }
        # Each task head retrieving its own task's positives (the served head is serve_task).
        by_head = {}
        for head in model.request.tasks:
            # The served head's vectors are ``q`` already; encode only the other heads.
            qh = (
                q
                if head == mcfg.serve_task
                else encode_requests(
                    model.request, queries, reqs, mcfg, whens=ev["ts"].tolist(), task=head
                )
            )
            truth = [
                set().union(*(labels[o].iloc[i] for o in TASK_OUTCOMES[head])) for i in range(n)
            ]
            ranked = exact_topk(item_vecs, qh, BY_OUTCOME_K, ids)[1]
            by_head[head] = recall_at(ranked, truth, [BY_OUTCOME_K])[BY_OUTCOME_K]
        report[task] = {
            "sessions": n,
            "sessions_by_outcome": {name: int(sum(map(bool, labels[name]))) for name in GRADES},
            "methods": methods,
            f"ebr_recall@{BY_OUTCOME_K}_by_outcome": by_outcome,
            f"ebr_recall@{BY_OUTCOME_K}_by_task_head": by_head,
            **sweeps,
        }
    if typed is not None:
        vocab = vocabulary or training_vocabulary(jobs, members, impressions)
        report["typed"] = evaluate_typed(
            model, mcfg, jobs, typed, vocab, bm25=bm25, item_vecs=item_vecs
        )
        report["signed_in"] = evaluate_signed_in(
            model, mcfg, jobs, members, typed, vocab, interest=interest, bm25=bm25,
            item_vecs=item_vecs, when=pd.Timestamp(impressions["ts"].max()),
        )  # fmt: skip
    return report


def _recall_at_100(ranked: np.ndarray, positives: list[set[int]]) -> float:
    return recall_at(ranked, positives, [100])[100]


def evaluate_release(
    ws: Workspace, model_dir: Path, slot_dir: Path, eval_days: int
) -> dict[str, Any]:
    """``evaluate_marketplace`` for a saved model and the slot serving it, as a release is
    evaluated: member interest from the co-trained interest model (lineage checked), the
    served index through the serving path, the typed queries (against the model's training
    vocabulary) and the model's training curves."""
    from ebr.data.esco import load_occupations
    from ebr.eval.ranking import served_search
    from ebr.model.artifact import load_two_tower, load_vocabulary
    from ebr.model.interest import load_interest_snapshots
    from ebr.versions import interest_paths, verified_interest

    jobs, members, impressions = (
        pd.read_parquet(ws.data / f"{n}.parquet") for n in ("jobs", "members", "impressions")
    )
    model, mcfg, meta = load_two_tower(model_dir)
    snaps = None
    iv = verified_interest(ws, meta)
    if iv is not None:
        snaps = load_interest_snapshots(
            interest_paths(ws, iv).model, jobs, members, impressions, eval_days
        )
    vocab = load_vocabulary(model_dir) or training_vocabulary(jobs, members, impressions)
    report = evaluate_marketplace(
        model,
        mcfg,
        jobs,
        members,
        impressions,
        eval_days,
        interest=snaps,
        ann=served_search(slot_dir),
        typed=typed_queries(jobs, impressions, load_occupations(), seed=0, vocabulary=vocab),
        vocabulary=vocab,
    )
    report["training"] = {k: meta["metrics"][k] for k in ("loss_curve", "task_loss_curves")}
    return report


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``eval_report.json`` and ``eval_report.png`` (recall@k per method, one panel per
    task, plus the training curves when the report carries ``training``: {"loss_curve": [..],
    "task_loss_curves": {task: [..]}}) atomically under ``out_dir``; returns both paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = [t for t in ("search", "jymbii") if t in report]
    if not tasks or "ks" not in report:
        raise ValueError(f"report lacks ks or tasks; keys: {sorted(report)}")
    out_dir = Path(out_dir)
    json_path, png_path = out_dir / "eval_report.json", out_dir / "eval_report.png"

    training = report.get("training")
    typed, signed_in = report.get("typed"), report.get("signed_in")
    panels = len(tasks) + (1 if training else 0) + (1 if typed else 0) + (1 if signed_in else 0)
    fig = Figure(figsize=(5 * panels, 4), dpi=100)
    FigureCanvasAgg(fig)  # Agg: no display, no pyplot global state
    ks = report["ks"]
    if training:
        ax = fig.add_subplot(1, panels, panels)
        ax.plot(training["loss_curve"], marker="o", label="total")
        for task, curve in training.get("task_loss_curves", {}).items():
            ax.plot(curve, marker=".", ls="--", label=f"{task} head")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        ax.set_title("training curves")
        ax.grid(True, alpha=0.3)
        ax.legend()
    if typed:
        typed_bars(fig.add_subplot(1, panels, len(tasks) + 1), typed)
    if signed_in:
        signed_in_bars(fig.add_subplot(1, panels, len(tasks) + 1 + bool(typed)), signed_in)
    for i, task in enumerate(tasks, start=1):
        ax = fig.add_subplot(1, panels, i)
        for method, m in report[task]["methods"].items():
            ax.plot(ks, [m[f"recall@{k}"] for k in ks], marker="o", label=method)
        ax.set_xscale("log")
        ax.set_ylim(0, 1)
        ax.set_xlabel("k")
        ax.set_ylabel("recall@k")
        ax.set_title(f"{task} ({report[task]['sessions']} held-out sessions)")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")

    atomic_write_json(json_path, report)
    atomic_write_bytes(png_path, buf.getvalue())
    return json_path, png_path


def typed_bars(ax: Any, typed: dict[str, Any]) -> None:
    """Typed-query precision@10 bars: overall and per bucket (by jobs, by searches) x method,
    the catalogue's ideal as a black tick."""
    rows = [(g, v) for g, v in typed_rows(typed) if not g.startswith("kind:")]
    x = np.arange(len(rows))
    for j, m in enumerate(("ebr", "bm25", "hybrid")):
        ax.bar(x + (j - 1) * 0.27, [v[m]["p@10"] for _, v in rows], 0.27, label=m)
    ax.scatter(x, [v["ideal"]["p@10"] for _, v in rows], marker="_", s=300, c="k", label="ideal")
    ax.set_xticks(x, [g for g, _ in rows], rotation=30, fontsize=7)
    n = sum(typed["n_queries"].values())
    ax.set(ylim=(0, 1.05), ylabel="precision@10", title=f"typed queries ({n}, never trained on)")
    ax.legend(fontsize=7)


def report_html(report: dict[str, Any], png_path: Path) -> str:
    """A self-contained HTML page (metrics tables + the embedded PNG), e.g. for a Flyte Deck."""
    import base64
    import html

    parts = ["<h2>Retrieval evaluation (held-out days)</h2>"]
    for task in ("search", "jymbii"):
        if task not in report:
            continue
        methods = report[task]["methods"]
        metrics = list(next(iter(methods.values())))
        head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td>"
            + "".join(f"<td>{vals[m]:.3f}</td>" for m in metrics)
            + "</tr>"
            for name, vals in methods.items()
        )
        parts.append(
            f"<h3>{task}: {report[task]['sessions']} sessions</h3>"
            f"<table border='1'><tr><th>method</th>{head}</tr>{rows}</table>"
        )
    if "typed" in report:
        rows = "".join(
            f"<tr><td>{html.escape(group)}</td><td>{m}</td>"
            + "".join(f"<td>{vals[m][k]:.3f}</td>" for k in ("p@10", "recall@100", "mrr"))
            + "</tr>"
            for group, vals in typed_rows(report["typed"])
            for m in ("ebr", "bm25", "hybrid")
        )
        parts.append(
            "<h3>typed queries (never in training)</h3><table border='1'><tr><th>queries</th>"
            f"<th>method</th><th>p@10</th><th>recall@100</th><th>mrr</th></tr>{rows}</table>"
        )
    if "methods_by_intent" in report.get("search", {}):
        parts.append(intent_html(report["search"]["methods_by_intent"]))
    if "signed_in" in report:
        parts.append(signed_in_html(report["signed_in"]))
    img = base64.b64encode(Path(png_path).read_bytes()).decode()
    parts.append(f"<img src='data:image/png;base64,{img}' alt='recall@k curves'/>")
    return "\n".join(parts)
