"""The retrieval ceiling of the synthetic marketplace: rank jobs by the hidden utility itself.

No model sees the generator's hidden state; an oracle that does (target occupation, skills,
commute, ...) ranks every active job by the noise-free utility of ``ebr.data.marketplace``.
Its recall@k on held-out sessions bounds what any retriever can reach on this data (engagement
also carries Gumbel noise and the incumbent's candidate sampling, which no ranking recovers).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ebr.data.engagement import Hidden, utility


def oracle_topk(hidden: Hidden, member_ids: Sequence[int], k: int) -> np.ndarray:
    """int64 [len(member_ids), k] job ids (1-based, like the tables) by descending utility."""
    n_jobs = len(hidden.j_occ)
    if not 1 <= k <= n_jobs:
        raise ValueError(f"k must be in [1, {n_jobs}], got {k}")
    out = np.empty((len(member_ids), k), dtype=np.int64)
    jobs = np.arange(n_jobs)
    for row, member in enumerate(member_ids):
        u = np.empty(n_jobs)
        for a in range(0, n_jobs, 50_000):  # bounded memory for the skill comparison
            part = jobs[a : a + 50_000]
            u[a : a + len(part)] = utility(hidden, np.full(len(part), int(member) - 1), part)
        u[~hidden.j_active] = -np.inf  # inactive jobs are never engaged
        top = np.argpartition(-u, k - 1)[:k]
        out[row] = top[np.argsort(-u[top], kind="stable")] + 1
    return out
