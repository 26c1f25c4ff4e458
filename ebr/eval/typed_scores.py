"""Scoring typed queries (``ebr.eval.typed`` makes them): EBR, BM25 and hybrid rankings of each
query, precision@10 / recall@100 per query, and summaries per kind and bucket.

    section = evaluate_typed(model, mcfg, jobs, typed_queries(...), vocabulary)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ebr.config import ModelConfig
from ebr.eval.bm25 import BM25Baseline
from ebr.eval.ranking import fusion_sweep, hybrid_ranking, pad_scores, pad_to
from ebr.eval.typed import BUCKETS, KINDS, METHODS, K
from ebr.metrics import exact_topk
from ebr.model.infer import encode_jobs, encode_requests
from ebr.model.towers import TwoTower
from ebr.text import Vocabulary


def relevant_jobs(jobs: pd.DataFrame, queries: pd.DataFrame) -> list[set[int]]:
    """Per query, the job ids of its relevant occupations (empty for unknown queries)."""
    by_occ = jobs.groupby("occupation_uri")["job_id"].agg(lambda s: set(s.tolist()))
    return [
        set().union(*(by_occ.get(u, set()) for u in rel)) if rel else set()
        for rel in queries["relevant_uris"]
    ]


def typed_metrics(ranked: np.ndarray, relevant: Sequence[set[int]]) -> pd.DataFrame:
    """Per-query metrics of ranked ids int64 [q, >=100] (best first, -1 = empty slot).

    p@10: relevant jobs among the top 10 / 10 (the ideal is min(10, relevant jobs) / 10);
    recall@100: relevant jobs in the top 100 / min(100, relevant jobs), so 1.0 is reachable;
    mrr: 1 / rank of the first relevant job in the top 100, else 0. NaN where nothing is
    relevant (the unknown kind). Returns columns p@10, recall@100, mrr.
    """
    if ranked.ndim != 2 or ranked.shape[1] < K or len(ranked) != len(relevant):
        raise ValueError(f"ranked must be [{len(relevant)}, >={K}], got {ranked.shape}")
    out = np.full((len(ranked), 3), np.nan)
    for q, (row, rel) in enumerate(zip(ranked[:, :K], relevant, strict=True)):
        if not rel:
            continue
        hit = np.fromiter((int(i) in rel for i in row), bool, K)
        first = np.flatnonzero(hit)
        rr = 1.0 / (first[0] + 1) if len(first) else 0.0
        out[q] = (hit[:10].sum() / 10, hit.sum() / min(K, len(rel)), rr)
    return pd.DataFrame(out, columns=["p@10", "recall@100", "mrr"])


def _summary(per: pd.DataFrame) -> dict[str, float]:
    """Means of the metric columns (over queries with a relevant job) + not_understood."""
    scored = per.dropna(subset=["p@10"])
    out = {
        c: float(scored[c].mean()) if len(scored) else 0.0 for c in ("p@10", "recall@100", "mrr")
    }
    out["not_understood"] = float(per["not_understood"].mean()) if len(per) else 0.0
    out["n"] = float(len(per))
    return out


def summarize(queries: pd.DataFrame, per_query: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """{method: {"overall", "by_kind", "by_bucket_jobs", "by_bucket_searches"}} of per-query
    frames (typed_metrics columns + bool not_understood). Overall and buckets cover the kinds
    with relevant jobs; by_kind includes unknown (only not_understood is meaningful there)."""
    known = (queries["kind"] != "unknown").to_numpy()
    out: dict[str, Any] = {}
    for method, per in per_query.items():
        per = per.reset_index(drop=True)
        entry: dict[str, Any] = {"overall": _summary(per[known])}
        entry["by_kind"] = {
            k: _summary(per[(queries["kind"] == k).to_numpy()])
            for k in KINDS
            if (queries["kind"] == k).any()
        }
        for col in ("bucket_jobs", "bucket_searches"):
            entry[f"by_{col}"] = {
                b: _summary(per[known & (queries[col] == b).to_numpy()]) for b in BUCKETS
            }
        out[method] = entry
    return out


def evaluate_typed(
    model: TwoTower,
    mcfg: ModelConfig,
    jobs: pd.DataFrame,
    queries: pd.DataFrame,
    vocabulary: Vocabulary,
    bm25: BM25Baseline | None = None,
    item_vecs: np.ndarray | None = None,
) -> dict[str, Any]:
    """EBR (exact search, request tower without a member), BM25 and their served hybrid
    (``hybrid_ranking``) on the typed queries; plus "ideal" (every relevant job first).

    ``item_vecs`` float32 [n_jobs, dim] in ``jobs`` order and ``bm25`` may be passed to reuse
    them. "Not understood": EBR when the vocabulary knows no word of the query, BM25 when it
    returns nothing, the hybrid when both. Returns {"n_queries": {kind: n},
    "dropped_in_training": {kind: n}, "methods": summarize(...), "targets": {name: bool},
    "hybrid_p@10_by_ebr_weight": {fusion: {weight: overall p@10}}}.
    """
    model.eval()
    ids = jobs["job_id"].to_numpy(np.int64)
    if item_vecs is None:
        item_vecs = encode_jobs(model.item, jobs.to_dict("records"), mcfg)
    texts = queries["query"].tolist()
    q = encode_requests(model.request, texts, [None] * len(texts), mcfg)  # [q, dim]
    ebr_s, ebr_ids = exact_topk(item_vecs, q, K, ids)
    bm25 = bm25 or BM25Baseline(jobs)
    bm_ids, bm_s = bm25.search_scored(texts, K)
    coverage, scale = bm25.coverage(texts), bm25.attainable(texts)
    ebr, bm = pad_to(ebr_ids, K), pad_to(bm_ids, K)
    ebr_s, bm_s = pad_scores(ebr_s, K), pad_scores(bm_s, K)
    hyb = hybrid_ranking(ebr, ebr_s, bm, bm_s, K, bm25_coverage=coverage, bm25_scale=scale)
    hyb = pad_to(hyb, K)
    rel = relevant_jobs(jobs, queries)
    ideal = np.array(
        [pad_to(np.array([sorted(r)[:K]], dtype=np.int64).reshape(1, -1), K)[0] for r in rel]
    )
    no_word = np.array([not vocabulary.split(t)[0] for t in texts])
    empty = (bm < 0).all(axis=1)
    per = {}
    for name, ranked, nu in (
        ("ebr", ebr, no_word),
        ("bm25", bm, empty),
        ("hybrid", hyb, no_word & empty),
        ("ideal", ideal, np.array([not r for r in rel])),
    ):
        per[name] = typed_metrics(ranked, rel).assign(not_understood=nu)
    methods = summarize(queries, per)
    p10 = {m: methods[m]["overall"]["p@10"] for m in METHODS}
    buckets = [
        (col, b) for col in ("by_bucket_jobs", "by_bucket_searches") for b in BUCKETS
        if methods["ebr"][col][b]["n"] > 0
    ]  # fmt: skip
    unknown = methods["ebr"]["by_kind"].get("unknown", {})
    targets = {
        "ebr_p@10_ge_bm25_overall": p10["ebr"] >= p10["bm25"],
        "ebr_p@10_ge_bm25_every_bucket": all(
            methods["ebr"][c][b]["p@10"] >= methods["bm25"][c][b]["p@10"] for c, b in buckets
        ),
        "hybrid_p@10_ge_best_plus_0.05": p10["hybrid"] >= max(p10["ebr"], p10["bm25"]) + 0.05,
        "unknown_not_understood_ebr": unknown.get("not_understood", 0.0) == 1.0,
    }
    sweep = fusion_sweep(
        (ebr, ebr_s),
        (bm, bm_s),
        K,
        lambda r: float(typed_metrics(r, rel)["p@10"].mean()),
        coverage,
        scale,
    )
    return {
        "n_queries": queries["kind"].value_counts().to_dict(),
        "dropped_in_training": dict(queries.attrs.get("dropped_in_training", {})),
        "methods": methods,
        "targets": targets,
        "hybrid_p@10_by_ebr_weight": sweep,
    }


def typed_rows(section: dict[str, Any]) -> list[tuple[str, dict[str, dict[str, float]]]]:
    """An ``evaluate_typed`` section as table rows (group, {method: metrics}); groups are
    overall, jobs:<bucket>, searches:<bucket>, kind:<kind>."""
    methods = section["methods"]
    keys: list[tuple[str, tuple[str, ...]]] = [("overall", ("overall",))]
    keys += [(f"jobs:{b}", ("by_bucket_jobs", b)) for b in BUCKETS]
    keys += [(f"searches:{b}", ("by_bucket_searches", b)) for b in BUCKETS]
    keys += [(f"kind:{k}", ("by_kind", k)) for k in KINDS if k in methods["ebr"]["by_kind"]]

    def get(m: str, path: tuple[str, ...]) -> dict[str, float]:
        d = methods[m]
        for p in path:
            d = d[p]
        return dict(d)

    return [(name, {m: get(m, path) for m in methods}) for name, path in keys]
