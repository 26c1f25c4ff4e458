"""Graded relevance a person would give, from the marketplace's preference model: what the
ranker's held-out NDCG and the offline comparison of orders are judged by (never the log's own
positions, which the incumbent ranker chose).

A candidate's gain is its expected outcome grade if the member examined it (none 0, click 1,
save 2, apply 3: ``GRADES``), the engagement funnel (``ebr.data.engagement.funnel``) averaged
over the taste noise, with the utility the simulator gives it: ``search_utility`` for a search
(the job matches what was typed, or loses ``MISMATCH``) and the profile ``utility`` for a feed.
What a typed query matches is read from its words as the generator wrote them
(``ebr.data.replay.QueryMatches``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ebr.data.engagement import APPLY_AT, CLICK_AT, NOISE, SAVE_P, SLOPE, search_utility, utility
from ebr.data.replay import _GUMBEL, QueryMatches, hidden_from_tables

GRADES = {"none": 0, "click": 1, "save": 2, "apply": 3}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def expected_grade(u: np.ndarray) -> np.ndarray:
    """float [n]: E[grade | examined] of jobs with noise-free utility ``u`` [n]."""
    out = np.empty(len(u))
    for a in range(0, len(u), 20_000):
        noisy = u[a : a + 20_000, None] + NOISE * _GUMBEL[None, :]
        click = _sigmoid(SLOPE * (noisy - CLICK_AT))
        apply = _sigmoid(SLOPE * (noisy - APPLY_AT))
        grade = click * (3 * apply + (1 - apply) * (2 * SAVE_P + (1 - SAVE_P)))
        out[a : a + 20_000] = grade.mean(axis=1)
    return out


class Judge:
    """Gains of (member, jobs, query) from the written tables (``hidden_from_tables``)."""

    def __init__(self, jobs: pd.DataFrame, members: pd.DataFrame) -> None:
        self.hidden = hidden_from_tables(jobs, members)
        self._job_row = pd.Index(jobs["job_id"].to_numpy(np.int64))
        self._mem_row = pd.Index(members["member_id"].to_numpy(np.int64))
        self.matches = QueryMatches(jobs)  # bool [n_jobs] of a query (module docstring)

    def gains(
        self, member_id: int, job_ids: Sequence[int] | np.ndarray, query: str | None
    ) -> np.ndarray:
        """float [n]: the expected grade of each of ``job_ids`` for ``member_id`` (0 for a
        job the catalogue lacks or a closed job), searched with ``query`` (None: a feed)."""
        ids = np.asarray(job_ids, dtype=np.int64)
        rows = self._job_row.get_indexer(ids)
        m = self._mem_row.get_indexer([int(member_id)])[0]
        if m < 0:
            raise KeyError(f"member {member_id} is not in the members table")
        ok = (rows >= 0) & (ids >= 0)
        out = np.zeros(len(ids))
        if not ok.any():
            return out
        jr, mr = rows[ok], np.full(int(ok.sum()), m)
        if query is None:
            u = utility(self.hidden, mr, jr)
        else:
            u = search_utility(self.hidden, mr, jr, self.matches(query)[jr])
        out[ok] = np.where(self.hidden.j_active[jr], expected_grade(u), 0.0)
        return out


def ndcg_at(gains: np.ndarray, order: np.ndarray, k: int = 10) -> float:
    """NDCG@k of showing candidates in ``order`` (indices into ``gains`` [N]), the ideal being
    the best order of the same candidates; NaN when no candidate has a gain."""
    disc = 1 / np.log2(np.arange(2, k + 2))
    ideal = np.sort(gains)[::-1][:k]
    best = float((ideal * disc[: len(ideal)]).sum())
    if best <= 0:
        return float("nan")
    got = gains[np.asarray(order, dtype=np.int64)[:k]]
    return float((got * disc[: len(got)]).sum()) / best
