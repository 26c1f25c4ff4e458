"""BM25 term-retrieval baseline over job text: the bar EBR must clear.

The same term index a slot serves (``ebr.index.query.terms``: bm25s over title twice, skills and
description, the towers' word normalisation), so the evaluation measures the term retrieval
``/v1/search`` answers with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ebr.index.query.terms import TermIndex, term_text, top_rows


class BM25Baseline:
    """Lexical retrieval: query text -> top-k job ids."""

    def __init__(self, jobs: pd.DataFrame) -> None:
        self._ids = jobs["job_id"].to_numpy(np.int64)
        self._index = TermIndex.build(term_text(jobs))

    def search(self, queries: Sequence[str], k: int) -> np.ndarray:
        """int64 [q, k] job ids best first; -1 where fewer than k jobs share a term."""
        return self.search_scored(queries, k)[0]

    def search_scored(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """``search`` and the BM25 scores float32 [q, k] (-inf pads)."""
        k = min(k, len(self._ids))
        out = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        for i, text in enumerate(queries):
            scores[i], rows = top_rows(self._index.scores(text), k)
            out[i] = np.where(rows >= 0, self._ids[np.maximum(rows, 0)], -1)
        return out, scores

    def scores_of(self, text: str, job_ids: np.ndarray) -> np.ndarray:
        """float [*job_ids.shape]: the BM25 score of each job for ``text`` (0: no shared term,
        or -1 padding)."""
        rows = pd.Index(self._ids).get_indexer(job_ids.ravel())
        out = np.where(rows >= 0, self._index.scores(text)[np.maximum(rows, 0)], 0.0)
        return out.reshape(job_ids.shape)

    def coverage(self, queries: Sequence[str]) -> np.ndarray:
        """float [q]: share of each query's terms the index holds (hybrid's BM25 weight)."""
        return np.array([self._index.coverage(t) for t in queries], dtype=np.float64)

    def attainable(self, queries: Sequence[str]) -> np.ndarray:
        """float [q]: the best BM25 score each query could reach (hybrid's BM25 scale)."""
        return np.array([self._index.attainable(t) for t in queries], dtype=np.float64)
