"""An exact bound on what an IVF page has not scanned: the cells that could still beat it.

The planner's score margin (``probing.ivf_rounds``) probes every cell whose centroid scores
within a margin of the page's k-th score: a statistic of how far the best rows stick out of
their cells. A row that sticks out much further (an eligible job far from the eligible mass,
between its cell and the query's region) sits in a cell probed late or never, and a sample of
the eligible rows almost never holds it: recall@10 0.89 on 50k clustered rows under a latitude
band, one such job missed by 29 of 30 queries (``tests/unit/test_planner_outliers.py``).

Cone bound: a row ``x`` at angle ``t`` from its cell's axis (the centroid's direction) and a
query ``q`` at angle ``a`` from it give ``q . x <= |q| |x| cos(max(0, a - t))`` (the spherical
triangle inequality). With ``t`` the cell's widest row, no row of a cell beats a page's k-th
score ``s`` unless ``|q| |x| cos(max(0, a - t)) >= s`` for the cell: the cells that pass are
scanned, the others provably hold nothing for the page. On 50k clustered rows (32-d) with a
far-region filter they hold ~31% of the eligible rows per query (the margin's probes 3%); for
filters independent of the vectors, or around the query, no more than the probes (and the
planner does not run the bound for those queries). Testing rows one by one instead (12% pass),
gathering and scoring them with numpy, ran at 5.3k queries/s on one core against 8.0k for
FAISS scanning the cells' contiguous codes (the margin alone: 21k).

    cones = cell_cones(index, vectors, ivf_layout(index))   # cached per index
    reach = reachable(cones, q, kth, cells, tol)             # bool [nq, cells]
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

CHUNK_ROWS = 262_144  # rows read at once while building the cones
CHUNK_QUERIES = 256  # queries tested at once
# Radians added to each cell's widest angle: float32 cosines near 1 leave the angle uncertain
# by up to sqrt(2 * 1e-7) ~ 5e-4 rad (and the bound loosens by ~1e-3 in score, no more).
ANGLE_SLACK = 1e-3


@dataclass(frozen=True)
class Cones:
    """Each IVF cell's rows as a cone around the cell's axis."""

    axes: np.ndarray  # float32 [nlist, d]: unit centroid directions (e0 for a zero centroid)
    cos_t: np.ndarray  # float64 [nlist]: cos and sin of the widest angle of a row to its
    sin_t: np.ndarray  # cell's axis, plus ANGLE_SLACK
    longest: np.ndarray  # float64 [nlist]: the longest row of each cell ...
    shortest: np.ndarray  # ... and the shortest (unit rows: both ~1)


_CONES: weakref.WeakKeyDictionary[Any, tuple[int, Cones]] = weakref.WeakKeyDictionary()


def cell_cones(index: faiss.Index, vectors: np.ndarray, layout: Any) -> Cones:
    """``Cones`` of an IVF ``index`` over its exact ``vectors`` [n, d], given its layout
    (``probing.ivf_layout``: cell of each row, centroids, cell sizes); cached per index and
    size. One pass over the vectors (0.09 s at 200k x 64, one core), paid by the first search
    that needs the bound, as ``probing.spill`` is."""
    hit = _CONES.get(index)
    if hit is not None and hit[0] == index.ntotal:
        return hit[1]
    cell, centroids, _ = layout
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    axes = (centroids / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    axes[norms[:, 0] == 0, 0] = 1.0  # any unit axis bounds a cell: its cone is only wider
    widest = np.full(len(centroids), 1.0)  # the smallest cosine of a row to its cell's axis
    longest = np.zeros(len(centroids))
    shortest = np.full(len(centroids), np.inf)
    for start in range(0, len(cell), CHUNK_ROWS):
        part = slice(start, min(start + CHUNK_ROWS, len(cell)))
        x, at = np.asarray(vectors[part], dtype=np.float32), cell[part]
        length = np.linalg.norm(x, axis=1).astype(np.float64)
        cos = np.einsum("ij,ij->i", x, axes[at]) / np.maximum(length, 1e-30)
        np.minimum.at(widest, at, np.clip(cos, -1.0, 1.0))
        np.maximum.at(longest, at, length)
        np.minimum.at(shortest, at, length)
    t = np.minimum(np.arccos(widest) + ANGLE_SLACK, np.pi)
    cones = Cones(axes, np.cos(t), np.sin(t), longest, np.where(np.isinf(shortest), 0, shortest))
    _CONES[index] = (index.ntotal, cones)
    return cones


def reachable(
    cones: Cones, q: np.ndarray, kth: np.ndarray, cells: np.ndarray, tol: float
) -> np.ndarray:
    """Whether a row of cell ``cells[j]`` could score above ``kth[i]`` for query ``q[i]``:
    bool [t, c], for ``q`` float32 [t, d], ``kth`` [t] (each page's last score, less ``tol``
    for float32 rounding), ``cells`` int [c]. False only where the cone bound rules it out."""
    out = np.empty((len(q), len(cells)), dtype=bool)
    for start in range(0, len(q), CHUNK_QUERIES):  # float64 temporaries of [chunk, c]
        part = slice(start, start + CHUNK_QUERIES)
        out[part] = _reachable(cones, q[part], kth[part], cells, tol)
    return out


def _reachable(
    cones: Cones, q: np.ndarray, kth: np.ndarray, cells: np.ndarray, tol: float
) -> np.ndarray:
    qn = np.linalg.norm(q, axis=1).astype(np.float64)
    cos_a = np.clip((q @ cones.axes[cells].T) / np.maximum(qn, 1e-30)[:, None], -1.0, 1.0)
    # The cosine a row must make with q to beat s: s / (|q| |x|), at the row length that makes
    # the test loosest (the longest for a positive s, the shortest for a negative one).
    s = kth.astype(np.float64)[:, None] - tol
    length = np.where(s >= 0, cones.longest[cells][None, :], cones.shortest[cells][None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.where(length > 0, s / (qn[:, None] * length), np.where(s < 0, -1.0, 2.0))
    need = np.nan_to_num(need, nan=-1.0)  # a zero query scores 0 everywhere
    # The best cosine a row of the cell can make with q: cos(max(0, a - t)).
    cos_t, sin_t = cones.cos_t[cells][None, :], cones.sin_t[cells][None, :]
    best = np.where(cos_a >= cos_t, 1.0, cos_a * cos_t + np.sqrt(1 - cos_a**2) * sin_t)
    return best + 1e-6 >= need
