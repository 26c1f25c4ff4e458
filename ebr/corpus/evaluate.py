"""A corpus as a RAG retriever: its evaluation queries (for ESCO, alternative labels held out of
the indexed text) against the live slot, each with one relevant article; recall@1, recall@10
and MRR@10 for ebr (the sentence encoder), term (BM25) and hybrid (both, fused by reciprocal
rank), on the same queries and the same slot that serving searches.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from ebr.config import Workspace
from ebr.corpus import CorpusSpec
from ebr.corpus.build import embed_texts, live_slot_dir

RETRIEVALS = ("ebr", "term", "hybrid")
K = 10


def ranks_of(found: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based rank of each query's relevant id in ``found`` [q, k] (0: not in the top k)."""
    hit = found == relevant[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 0)


def scores(ranks: np.ndarray) -> dict[str, float]:
    """recall@1, recall@10 and MRR@10 of 1-based ``ranks`` (0: missed)."""
    reciprocal = np.where(ranks > 0, 1.0 / np.maximum(ranks, 1), 0.0)
    return {
        "recall@1": round(float((ranks == 1).mean()), 4),
        "recall@10": round(float(((ranks >= 1) & (ranks <= K)).mean()), 4),
        "mrr@10": round(float(reciprocal.mean()), 4),
    }


def evaluate_corpus(
    ws: Workspace,
    spec: CorpusSpec,
    limit: int | None = None,
    seed: int = 0,
    queries: pd.DataFrame | None = None,
    hybrid_weights: tuple[float, ...] = (),
) -> dict[str, Any]:
    """Each retrieval's scores on ``spec``'s queries (or ``queries``; ``limit``: a random
    sample of them) against the live slot, in batches (serving answers the same one at a
    time). Hybrid fuses with ``spec.ebr_weight``; ``hybrid_weights`` adds a sweep of others
    (``hybrid_sweep``)."""
    from ebr.index.live.slot import open_live
    from ebr.index.query.retrieve import retrieve

    record, slot_dir = live_slot_dir(ws, spec.name)
    queries = spec.load("queries") if queries is None else queries
    if limit is not None and limit < len(queries):
        queries = queries.sample(limit, random_state=seed)
    texts = queries["query"].astype(str).tolist()
    relevant = queries["article_id"].to_numpy(dtype=np.int64)
    t0 = time.perf_counter()
    vectors = embed_texts(texts)
    embed_s = time.perf_counter() - t0
    live = open_live(slot_dir, writable=False)
    view = live.view()
    out: dict[str, Any] = {
        "corpus": spec.name, "release": record["id"], "articles": record["articles"],
        "queries": len(texts), "k": K, "encoder": spec.encoder,
        "query_embed_ms": round(embed_s / max(len(texts), 1) * 1e3, 3), "retrievals": {},
    }  # fmt: skip

    def run(how: str, weight: float) -> dict[str, float]:
        found = np.full((len(texts), K), -1, dtype=np.int64)
        t0 = time.perf_counter()
        for a in range(0, len(texts), 512):
            b = a + 512
            hits = retrieve(view, vectors[a:b], K, texts=texts[a:b], retrieval=how,
                            ebr_weight=weight)  # fmt: skip
            found[a:b] = hits.job_ids
        seconds = time.perf_counter() - t0
        ms = round(seconds / max(len(texts), 1) * 1e3, 3)
        return {**scores(ranks_of(found, relevant)), "ms_per_query": ms}

    for how in RETRIEVALS:
        out["retrievals"][how] = run(how, spec.ebr_weight)
    out["ebr_weight"] = spec.ebr_weight
    out["hybrid_sweep"] = {str(w): run("hybrid", w) for w in hybrid_weights}
    return out
