"""Build FAISS indexes over L2-normalised embeddings and measure their recall against exact search.

Cosine similarity on unit vectors equals inner product, so every index here uses
``METRIC_INNER_PRODUCT``. Four kinds (``IndexConfig.kind``):

- ``flat``:  exact ``IndexFlatIP``; the reference and the right choice for small catalogues.
- ``ivf``:   ``IVF{nlist},Flat``; exact distances inside the probed cells.
- ``ivfpq``: ``IVF{nlist},PQ{m}x4fs,RFlat`` (4-bit fast-scan PQ, the default; m = d unless
  set) or ``IVF{nlist},PQ{m},RFlat`` (8-bit PQ); the compressed scan proposes ``refine * k``
  candidates that are re-ranked with exact inner products (STACK.md: fast-scan PQ + refine was
  the fastest at recall@10 0.95).
- ``hnsw``:  ``HNSW{hnsw_m},Flat``; a navigable graph over the exact vectors, no training.

Search-time knobs (nprobe, refine, ef_search) are set and read with ``ebr.index.query.params``;
``ebr.index.build.tune`` picks the cheapest setting that reaches ``IndexConfig.target_recall``.

Try it::

    python -c "import numpy as np; from ebr.config import IndexConfig; \
from ebr.index.build.faiss_index import build_index, ann_recall_at_k; \
x = np.random.default_rng(0).standard_normal((20000, 64)).astype('float32'); \
x /= np.linalg.norm(x, axis=1, keepdims=True); idx, info = build_index(x, IndexConfig()); \
print(info, ann_recall_at_k(idx, x, 200))"
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from ebr.config import IndexConfig
from ebr.index.query.params import search_params, set_search_params  # re-exported for callers
from ebr.index.query.vectors import check_vectors
from ebr.metrics import drop_own, exact_topk, recalls_per_query

MIN_IVF_POINTS = 1_000  # below this an IVF/PQ index saves nothing and trains badly: use flat
MIN_POINTS_PER_CELL = 39  # faiss k-means warns below 39 training points per centroid
MAX_TRAIN_POINTS = 100_000  # k-means quality saturates well before this; training time does not


def set_faiss_threads(n: int) -> None:
    """Cap FAISS's OpenMP threads (call from entry points only; nothing here calls it)."""
    if n < 1:
        raise ValueError(f"faiss thread count must be >= 1, got {n}")
    faiss.omp_set_num_threads(n)


def effective_nlist(n: int, requested: int) -> int:
    """IVF cell count for ``n`` points: ``requested`` (or ~4*sqrt(n)) capped at n / 39."""
    wanted = requested if requested > 0 else round(4 * math.sqrt(n))
    return max(1, min(wanted, n // MIN_POINTS_PER_CELL))


def effective_pq_m(d: int, cfg: IndexConfig) -> int:
    """PQ sub-quantizers for dim ``d``: ``cfg.pq_m``, or (0) as many as give 4 bits a dimension.

    Learned embeddings put their top-10 within a few hundredths of cosine of the next hundred
    (queries at ~0.78, the 100th at ~0.72 on job embeddings), so coarser codes mis-rank more
    than a 16x refine can repair.
    """
    if cfg.pq_m:
        return cfg.pq_m
    return d // 2 if cfg.pq_nbits == 8 and d % 2 == 0 else d


def _factory_string(cfg: IndexConfig, nlist: int, pq_m: int) -> str:
    if cfg.kind == "hnsw":
        return f"HNSW{cfg.hnsw_m},Flat"
    if cfg.kind == "ivf":
        return f"IVF{nlist},Flat"
    pq = f"PQ{pq_m}x4fs" if cfg.pq_nbits == 4 else f"PQ{pq_m}"
    return f"IVF{nlist},{pq},RFlat"


def build_index(
    vectors: np.ndarray, cfg: IndexConfig, untrained: np.ndarray | None = None
) -> tuple[faiss.Index, dict[str, Any]]:
    """Train and fill the index ``cfg`` asks for over ``vectors``.

    Args:
        vectors: float32 [n, d], L2-normalised rows; FAISS id ``i`` is row ``i``.
        cfg: which index to build.
        untrained: rows left out of the IVF / PQ training (still indexed): the recall gate's
            held-out rows, so its leave-one-out queries are out of sample as real ones are
            (GloVe, 40k words: trained on, leave-one-out overstated held-out words' recall@10
            by 0.007; left out, by 0.003, within the sample's noise).

    Returns:
        The filled index (searching it returns inner products = cosine) and the effective
        parameters: kind, requested_kind, factory, nlist, nprobe, pq_m, pq_nbits, refine,
        hnsw_m, ef_construction, ef_search, degraded_to_flat. Settings that do not apply to
        the kind built are ``None``.

    Raises:
        ValueError: bad vectors, or ``pq_m`` does not divide ``d`` for an ``ivfpq`` request.
    """
    vectors = check_vectors(vectors)
    n, d = vectors.shape
    pq_m = effective_pq_m(d, cfg)
    if cfg.kind == "ivfpq" and d % pq_m != 0:
        # Checked even when a small n degrades to flat, so the config fails before it meets
        # a big catalogue rather than after.
        raise ValueError(f"pq_m={pq_m} must divide the vector dim d={d}")

    degraded = cfg.kind not in ("flat", "exact") and n < MIN_IVF_POINTS
    kind = "flat" if degraded else cfg.kind
    info: dict[str, Any] = {
        "kind": kind,
        "requested_kind": cfg.kind,
        "factory": "Flat",
        "nlist": None,
        "nprobe": None,
        "pq_m": None,
        "pq_nbits": None,
        "refine": None,
        "hnsw_m": None,
        "ef_construction": None,
        "ef_search": None,
        "degraded_to_flat": degraded,
    }
    if kind in ("flat", "exact"):  # exact: searched with torch on a device once loaded
        index: faiss.Index = faiss.IndexFlatIP(d)
        index.add(vectors)
        return index, info
    if kind == "hnsw":
        factory = _factory_string(cfg, 0, 0)
        hnsw: Any = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = cfg.ef_construction
        # Insertion runs on all OpenMP threads, so the graph (and recall, slightly) differs
        # between runs with more than one thread; nothing to train.
        hnsw.add(vectors)
        set_search_params(hnsw, {"ef_search": cfg.ef_search})
        info.update(
            factory=factory,
            hnsw_m=cfg.hnsw_m,
            ef_construction=cfg.ef_construction,
            **search_params(hnsw),
        )
        return hnsw, info

    nlist = effective_nlist(n, cfg.nlist)
    factory = _factory_string(cfg, nlist, pq_m)
    # Any: the factory hands back IndexIVF* or IndexRefineFlat; faiss's stubs only say Index.
    index_any: Any = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index_any)
    ivf.cp.seed = cfg.seed
    if kind == "ivfpq":
        # Keep a Python reference to the downcast base: it is owned by the refine index.
        base: Any = faiss.downcast_index(index_any.base_index)
        base.pq.cp.seed = cfg.seed
        if hasattr(base, "do_polysemous_training"):
            # The factory turns this on for 8-bit PQ; it only serves Hamming pre-filtering,
            # which we never use, and it multiplies training time (~10 s on 5k x 32).
            base.do_polysemous_training = False

    rng = np.random.default_rng(cfg.seed)
    # Many cells need more than the cap: faiss wants >= 39 points per centroid (4096 -> 160k).
    n_train = max(MAX_TRAIN_POINTS, MIN_POINTS_PER_CELL * nlist)
    if untrained is not None:
        pool = np.setdiff1d(np.arange(n), untrained)
        chosen = rng.choice(pool, n_train, replace=False) if len(pool) > n_train else pool
        sample = vectors[np.sort(chosen)]
    elif n > n_train:
        # Sorted rows keep the gather cache-friendly; the sample is fixed by cfg.seed.
        sample = vectors[np.sort(rng.choice(n, n_train, replace=False))]
    else:
        sample = vectors
    index_any.train(sample)
    index_any.add(vectors)
    wanted = {"nprobe": min(cfg.nprobe, nlist)}
    if kind == "ivfpq":
        wanted["refine"] = cfg.refine
        info.update(pq_m=pq_m, pq_nbits=cfg.pq_nbits)
    set_search_params(index_any, wanted)
    info.update(factory=factory, nlist=nlist, **search_params(index_any))
    return index_any, info


def recall_queries(vectors: np.ndarray, n_queries: int, seed: int, noise: float) -> np.ndarray:
    """Sample ``n_queries`` rows of ``vectors`` [n, d], jitter and re-normalise them -> [q, d].

    Jittered copies stand in for real queries: near a catalogue item but not equal to it, so an
    index cannot score well by only finding the identical row.
    """
    n, d = vectors.shape
    rng = np.random.default_rng(seed)
    rows = rng.choice(n, size=min(n_queries, n), replace=False)
    # noise / sqrt(d) per coordinate gives a perturbation of norm ~noise, whatever d is.
    q = vectors[rows] + rng.standard_normal((len(rows), d)).astype(np.float32) * (
        noise / math.sqrt(d)
    )
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.ascontiguousarray(q, dtype=np.float32)


def ann_recall_at_k(
    index: faiss.Index,
    vectors: np.ndarray,
    n_queries: int,
    k: int = 10,
    seed: int = 0,
    noise: float = 0.1,
) -> float:
    """Mean |ANN top-k ∩ exact top-k| / k over jittered copies of sampled rows.

    Args:
        index: filled with ``vectors`` (FAISS id i = row i).
        vectors: float32 [n, d], the rows ``index`` holds.
        n_queries: queries to sample (capped at n).
        k: cut-off; capped at n so a tiny catalogue is not penalised for missing rows.
        seed: fixes the sampled rows and the noise.
        noise: norm of the gaussian jitter added to each query before re-normalising.
    """
    if n_queries < 1 or k < 1:
        raise ValueError(f"n_queries and k must be >= 1, got {n_queries} and {k}")
    return recall_on(index, vectors, recall_queries(vectors, n_queries, seed, noise), k)


def held_out_rows(n: int, n_queries: int, seed: int) -> np.ndarray:
    """``n_queries`` distinct rows of a catalogue of ``n`` (capped at n - 1), int64 [q], picked
    by ``seed``: the rows ``held_out_recall`` searches as queries not in the catalogue."""
    if n < 2 or n_queries < 1:
        raise ValueError(f"held-out rows need n >= 2 and n_queries >= 1, got {n}, {n_queries}")
    rng = np.random.default_rng(seed)
    return np.asarray(rng.choice(n, size=min(n_queries, n - 1), replace=False), dtype=np.int64)


def search_ids(
    index: faiss.Index, queries: np.ndarray, k: int, own: np.ndarray | None = None
) -> np.ndarray:
    """ANN ids [q, k] of ``queries``; with ``own`` [q] (each query's own row), leave-one-out:
    one deeper, the query's own row dropped (``ebr.metrics.drop_own``)."""
    if own is None:
        return np.asarray(index.search(queries, k)[1])
    return drop_own(np.asarray(index.search(queries, k + 1)[1]), own)


def exact_ids(
    vectors: np.ndarray, queries: np.ndarray, k: int, own: np.ndarray | None = None
) -> np.ndarray:
    """``search_ids`` by exact search over ``vectors``: the truth recall is measured against."""
    if own is None:
        return exact_topk(vectors, queries, k)[1]
    return drop_own(exact_topk(vectors, queries, k + 1)[1], own)


def recall_on(
    index: faiss.Index,
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int = 10,
    own: np.ndarray | None = None,
) -> float:
    """Mean |ANN top-k ∩ exact top-k| / k of ``queries`` [q, d] (unit rows) against the
    ``vectors`` [n, d] ``index`` holds; k capped at n (n - 1 with ``own``, see ``search_ids``)."""
    return float(recalls_on(index, vectors, queries, k, own).mean())


def recalls_on(
    index: faiss.Index,
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int = 10,
    own: np.ndarray | None = None,
) -> np.ndarray:
    """``recall_on`` per query -> float64 [q] (what ``ebr.metrics.recall_lower_bound`` takes)."""
    if index.ntotal != len(vectors):
        raise ValueError(f"index holds {index.ntotal} vectors but {len(vectors)} were given")
    k = min(k, len(vectors) - (own is not None))
    truth = exact_ids(vectors, queries, k, own)
    return recalls_per_query(search_ids(index, queries, k, own), truth)


def held_out_recall(
    index: faiss.Index, vectors: np.ndarray, n_queries: int, k: int = 10, seed: int = 0
) -> np.ndarray:
    """Recall@k per query [q] of ``held_out_rows`` searched leave-one-out: each row as a query
    that is not in the catalogue, the way a request or a held-out item is. Harder than jittered
    rows (whose own row scores ~0.995 and sits in every top-10), and like real held-out queries
    of the same distribution (GloVe-400k: see ``benchmarks.recall_gate``)."""
    rows = held_out_rows(len(vectors), n_queries, seed)
    return recalls_on(index, vectors, vectors[rows], k, own=rows)
