"""BM25 term-retrieval baseline over job text (bm25s), the bar EBR must clear."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def job_text(jobs: pd.DataFrame) -> list[str]:
    """The text a term engine indexes: title (twice, as fields are usually boosted), skills,
    description."""
    skills = jobs["skills"].map(lambda s: " ".join(s) if s is not None else "")
    return (jobs["title"] + " " + jobs["title"] + " " + skills + " " + jobs["description"]).tolist()


class BM25Baseline:
    """Lexical retrieval: query text -> top-k job ids."""

    def __init__(self, jobs: pd.DataFrame) -> None:
        import bm25s

        self._ids = jobs["job_id"].to_numpy()
        self._retriever = bm25s.BM25()
        self._retriever.index(bm25s.tokenize(job_text(jobs), stopwords="en", show_progress=False),
                              show_progress=False)  # fmt: skip

    def search(self, queries: Sequence[str], k: int) -> np.ndarray:
        """int64 [q, k] job ids best first; -1 where fewer than k jobs share a term."""
        import bm25s

        k = min(k, len(self._ids))
        tokens = bm25s.tokenize(list(queries), stopwords="en", show_progress=False)
        docs, scores = self._retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        ids = self._ids[docs]
        return np.where(scores > 0, ids, -1).astype(np.int64)
