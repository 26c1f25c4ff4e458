"""Pick the cheapest search setting of an index that still reaches the target recall@10.

Drop-in after ``build_index``::

    index, info = build_index(vectors, cfg)
    tuned = tune(index, vectors, cfg)        # sets the chosen knobs on ``index``
    info.update(tuned["chosen"])             # or raises RecallGateError: no setting is good enough

Re-tune a written slot without changing it: ``ebr slot tune --slot ...``.

Recall is measured against exact search on request-like queries: real request embeddings
passed as ``queries`` when a release has them, otherwise held-out catalogue rows (each row
searched leave-one-out, as a query that is not in the catalogue: ``held_out_recall``), or, when
``IndexConfig.tune_on`` asks for it, jittered catalogue rows (easier: a jittered row finds
itself, so recall on them overstates what held-out queries get; GloVe-400k: 0.950 claimed,
0.942 served). A setting passes when the one-sided 99% lower bound of its recall
(``ebr.metrics.recall_lower_bound``) reaches the target, not its point estimate: the margin
the sample's noise needs, so the slot serves the target on new queries of that kind. Cost is
the wall time of one batch search of those queries (median of 3, at ``threads`` FAISS
threads): the quantity a batch-serving replica pays per query.

The gate also covers filtered search: at the chosen setting, the planner's ANN path
(``filtered_search``) must reach the target on the same queries under three filters made from
the vectors (``ebr.index.build.filtered_gate``): 40% of rows at random, and two that correlate with
the vectors the way a region or an industry does, queries on the other side. That is where
filtered ANN loses recall while unfiltered recall looks fine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import faiss
import numpy as np

from ebr.config import IndexConfig
from ebr.index.build.faiss_index import (
    exact_ids,
    held_out_rows,
    recall_queries,
    search_ids,
    set_faiss_threads,
)
from ebr.index.build.filtered_gate import filtered_recalls
from ebr.index.query.params import index_kind, search_params, set_search_params
from ebr.index.query.planner import PlannerParams
from ebr.index.query.vectors import check_vectors
from ebr.metrics import recall_lower_bound, recalls_per_query
from ebr.progress import report

REFINE_FACTORS = (16, 8, 4, 2, 1)  # high first: it finds a passing setting sooner (a cost bound)
EF_SEARCH = (16, 32, 64, 128, 256, 512)
TIMING_REPEATS = 3
QUERY_NOISE = 0.1  # ann_recall_at_k's default: tuner and manifest measure on the same queries
# What a recall was measured on (slot manifests' ``recall_queries_source``).
SOURCE_REQUESTS = "request embeddings"
SOURCE_HELD_OUT = "held-out catalogue rows"
SOURCE_JITTERED = "jittered catalogue rows"
MAX_HELD_OUT_SHARE = 0.2  # of a catalogue's rows: held out of the index's training (writer)


class RecallGateError(ValueError):
    """No search setting of an index reaches the target recall@10 (``sweep`` holds them all)."""

    def __init__(self, message: str, sweep: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
        self.sweep = list(sweep)


def check_target_recall(
    recall: float, target: float, params: Mapping[str, Any] | None = None
) -> None:
    """Raise ``RecallGateError`` when ``recall`` (recall@10 vs exact) is below ``target``."""
    if not 0 < target <= 1:
        raise ValueError(f"target_recall must be in (0, 1], got {target}")
    if recall < target:
        where = f" with {dict(params)}" if params is not None else ""
        raise RecallGateError(f"recall@10 {recall:.4f}{where} is below target_recall={target}")


def _powers_of_two_upto(n: int) -> list[int]:
    """1, 2, 4, ... <= n, plus n itself (visiting every cell is the exact end of the curve)."""
    out = [1 << i for i in range(n.bit_length()) if (1 << i) <= n]
    return out if out[-1] == n else [*out, n]


def sweep_grid(index: faiss.Index) -> list[list[dict[str, int]]]:
    """The settings ``tune`` tries, as groups whose cost rises along each group.

    Within a group only the effort knob (nprobe, ef_search) grows, so once a setting in it
    reaches the target, or costs more than a passing one, the rest of the group can be skipped.
    """
    kind = index_kind(index)
    if kind == "flat":
        return [[{}]]
    if kind == "hnsw":
        return [[{"ef_search": ef} for ef in EF_SEARCH]]
    nprobes = _powers_of_two_upto(int(faiss.extract_index_ivf(index).nlist))
    if kind == "ivf":
        return [[{"nprobe": p} for p in nprobes]]
    return [[{"nprobe": p, "refine": r} for p in nprobes] for r in REFINE_FACTORS]


def _measure(
    index: faiss.Index, queries: np.ndarray, k: int, own: np.ndarray | None
) -> tuple[float, np.ndarray]:
    """(median seconds of one batch search of ``queries`` [q, d], the ids found [q, k])."""
    times = []
    for _ in range(TIMING_REPEATS):
        t0 = time.perf_counter()
        found = search_ids(index, queries, k, own)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), found


def tuning_queries(
    vectors: np.ndarray, cfg: IndexConfig, n_queries: int, seed: int
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The queries a gate measures on when no request embeddings are given: (queries [q, d],
    their own rows [q] to leave out or None, source). Held-out rows unless ``cfg.tune_on`` is
    "jittered" (or the catalogue has a single row, which cannot be left out). At most
    ``MAX_HELD_OUT_SHARE`` of the rows are held out: ``write_slot`` trains the index without
    them."""
    if cfg.tune_on == "jittered" or len(vectors) < 2:
        return recall_queries(vectors, n_queries, seed, QUERY_NOISE), None, SOURCE_JITTERED
    n_queries = min(n_queries, max(1, int(len(vectors) * MAX_HELD_OUT_SHARE)))
    rows = held_out_rows(len(vectors), n_queries, seed)
    return np.ascontiguousarray(vectors[rows]), rows, SOURCE_HELD_OUT


def tune(
    index: faiss.Index,
    vectors: np.ndarray,
    cfg: IndexConfig,
    n_queries: int = 500,
    k: int = 10,
    threads: int = 2,
    full_sweep: bool = False,
    queries: np.ndarray | None = None,
    planner: PlannerParams | None = None,
    own: np.ndarray | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Sweep ``index``'s search knobs, apply the cheapest setting whose recall reaches the
    target with the sample's margin (its 99% lower bound >= the target).

    Args:
        index: built by ``build_index`` over ``vectors`` (or loaded from a slot); its kind is
            read from the index itself, so a catalogue that degraded to flat is tuned as flat.
        vectors: float32 [n, d] unit rows; FAISS id i = row i.
        cfg: supplies ``target_recall`` and ``seed`` (which rows become queries).
        n_queries: catalogue rows used as queries (capped at n - 1) when ``queries`` is
            None: held out (leave-one-out), or jittered when ``cfg.tune_on`` is "jittered".
        k: recall cut-off (capped at n).
        threads: FAISS OpenMP threads while timing (restored afterwards).
        full_sweep: measure every setting instead of skipping those that cannot be cheapest.
        queries: float32 [q, d] unit rows to tune on instead of catalogue rows, e.g.
            held-out request embeddings. Prefer them when there are some: request embeddings
            sit farther from the catalogue than jittered rows (top-1 cosine ~0.8 vs ~0.99 for
            job embeddings), where the top-10 is harder to separate, so recall on jittered rows
            can overstate it (benchmarks/ann_curves.py: 0.953 on rows was 0.919 on requests
            over 50k jobs; 0.962 vs 0.958 over 1M).
        planner: the ``filtered_search`` knobs serving uses (default ``PlannerParams()``); the
            filtered gate measures them.
        own: with ``queries`` that are catalogue rows, those rows [q]: each is left out of its
            own results. A row the index was trained on, or an HNSW node whose own links lead
            to its neighbours, makes this optimistic: ``write_slot`` trains without them (IVF)
            or tunes an HNSW graph built without them.
        source: what ``queries`` are, for the result and messages (default: request
            embeddings, or held-out catalogue rows with ``own``).

    Returns:
        ``{"kind", "chosen": params, "recall_at_10", "recall_lower_at_10", "seconds",
        "target_recall", "n_queries", "source", "k", "sweep": [{"params", "recall",
        "recall_lower", "seconds"}, ...], "filtered_recall_at_10": {filter: recall}}``:
        ``recall_lower_at_10`` is the chosen setting's 99% lower bound (>= the target);
        ``seconds`` is the batch-search wall time for the ``n_queries`` queries;
        ``sweep`` lists every setting measured; ``filtered_recall_at_10`` is the planner's at
        the chosen setting under each ``gate_filters`` filter.

    Raises:
        RecallGateError: no setting reaches ``cfg.target_recall`` unfiltered, or the chosen one
            misses it under a gate filter (the index keeps the search params it came with; the
            message names the best recall and its setting, or the filter and its recall).
        ValueError: bad vectors, or ``index`` does not hold them.
    """
    vectors = check_vectors(vectors)
    if index.ntotal != len(vectors):
        raise ValueError(f"index holds {index.ntotal} vectors but {len(vectors)} were given")
    if n_queries < 1 or k < 1 or threads < 1:
        raise ValueError(f"n_queries, k, threads must be >= 1, got {n_queries}, {k}, {threads}")
    kind = index_kind(index)
    target = cfg.target_recall
    if queries is None:
        queries, own, source = tuning_queries(vectors, cfg, n_queries, cfg.seed)
    else:
        queries = check_vectors(queries, "queries")
        if queries.shape[1] != vectors.shape[1]:
            raise ValueError(f"queries have d={queries.shape[1]}, vectors d={vectors.shape[1]}")
        if own is not None and (own.shape != (len(queries),) or len(vectors) < 2):
            raise ValueError(f"own must be [q={len(queries)}] rows of >= 2, got {own.shape}")
        source = source or (SOURCE_REQUESTS if own is None else SOURCE_HELD_OUT)
    k = min(k, len(vectors) - (own is not None))
    truth = exact_ids(vectors, queries, k, own)

    original = search_params(index)
    previous_threads = faiss.omp_get_max_threads()
    set_faiss_threads(threads)
    sweep: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None  # cheapest passing entry so far
    try:
        for group in sweep_grid(index):
            for params in group:
                set_search_params(index, params)
                seconds, found = _measure(index, queries, k, own)
                per_query = recalls_per_query(found, truth)
                recall, lower = float(per_query.mean()), recall_lower_bound(per_query)
                entry = {"params": params, "recall": recall, "recall_lower": lower}
                entry["seconds"] = seconds
                sweep.append(entry)
                report("tune", advance=1, recall=round(recall, 4), params=params)
                passes = lower >= target
                if passes and (best is None or seconds < best["seconds"]):
                    best = entry
                # More effort in this group only costs more: it can no longer be the cheapest.
                if not full_sweep and (passes or (best is not None and seconds > best["seconds"])):
                    break
    finally:
        set_faiss_threads(previous_threads)
        set_search_params(index, original)

    if best is None:
        top = max(sweep, key=lambda e: (e["recall"], -e["seconds"]))
        raise RecallGateError(
            f"no {kind} search setting reaches target_recall={target}: best recall@{k} "
            f"{top['recall']:.4f} (99% lower bound {top['recall_lower']:.4f} over "
            f"{len(queries)} {source}) with {top['params']} over {len(sweep)} settings; build a "
            f"more accurate index (more PQ sub-quantizers, hnsw_m, or kind 'flat')",
            sweep,
        )
    set_search_params(index, best["params"])
    filtered = filtered_recalls(index, vectors, queries, k, cfg.seed, planner, own)
    missed = {name: r for name, r in filtered.items() if r < target}
    if missed:
        set_search_params(index, original)
        shown = ", ".join(f"{name!r} filter {r:.4f}" for name, r in missed.items())
        raise RecallGateError(
            f"{kind} index with {best['params']} reaches recall@{k} {best['recall']:.4f} "
            f"unfiltered but filtered recall@{k} is below target_recall={target}: {shown} "
            f"(ebr.index.build.filtered_gate); the planner (ebr.index.query.planner) loses rows "
            f"the exact filtered search finds",
            sweep,
        )
    return {
        "kind": kind,
        "chosen": dict(best["params"]),
        "recall_at_10": best["recall"],
        "recall_lower_at_10": best["recall_lower"],
        "seconds": best["seconds"],
        "target_recall": target,
        "n_queries": len(queries),
        "source": source,
        "k": k,
        "sweep": sweep,
        "filtered_recall_at_10": filtered,
    }
