"""What every index input holds: float32 [n, d] arrays of finite unit rows (cosine = inner
product), checked on the way into a build, a live upsert and a search."""

from __future__ import annotations

import numpy as np

from ebr.data.records import UNIT_TOLERANCE

# float32 normalisation error is ~1e-7; larger means "not normalised" (the record contract's)
NORM_TOLERANCE = UNIT_TOLERANCE


def check_vectors(vectors: np.ndarray, what: str = "vectors") -> np.ndarray:
    """Validate ``vectors`` [n, d] float32, finite, unit rows; return them C-contiguous."""
    if not isinstance(vectors, np.ndarray) or vectors.ndim != 2:
        shape = getattr(vectors, "shape", type(vectors).__name__)
        raise ValueError(f"{what} must be a 2-D array [n, d], got shape {shape}")
    if vectors.dtype != np.float32:
        raise ValueError(f"{what} must be float32, got {vectors.dtype}")
    n, d = vectors.shape
    if n == 0 or d == 0:
        raise ValueError(f"{what} must be non-empty, got shape {vectors.shape}")
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        raise ValueError(f"{what} row {int(np.argmin(finite))} contains NaN or inf")
    norms = np.linalg.norm(vectors, axis=1)
    worst = int(np.argmax(np.abs(norms - 1.0)))
    if abs(norms[worst] - 1.0) > NORM_TOLERANCE:
        # Inner product only equals cosine on unit vectors; unnormalised rows rank wrongly.
        raise ValueError(
            f"{what} rows must be L2-normalised (cosine = inner product); "
            f"row {worst} has norm {norms[worst]:.4f}"
        )
    return np.ascontiguousarray(vectors)


def check_queries(queries: np.ndarray, k: int, dim: int, slot_name: str) -> np.ndarray:
    """Validate a search request; return the queries as C-contiguous float32 [q, dim]."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not isinstance(queries, np.ndarray) or queries.ndim != 2:
        shape = getattr(queries, "shape", type(queries).__name__)
        raise ValueError(f"queries must be a 2-D array [q, d], got shape {shape}")
    if queries.shape[1] != dim:
        raise ValueError(
            f"query dim mismatch: slot {slot_name} expects d={dim}, got d={queries.shape[1]}"
        )
    if not np.issubdtype(queries.dtype, np.floating):
        raise ValueError(f"queries must be floating point, got {queries.dtype}")
    if not len(queries):
        return np.ascontiguousarray(queries, dtype=np.float32)
    # The catalogue's rules (finite, unit rows): a NaN query would otherwise come back as
    # all -1 from FAISS, or trip an internal check deep in the planner.
    return check_vectors(np.ascontiguousarray(queries, dtype=np.float32), "queries")
