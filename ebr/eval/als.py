"""Collaborative-filtering baselines (ALS, popularity) on an implicit-feedback split.

They give the two-tower retrieval numbers a floor: a model that cannot beat matrix
factorisation on the same split is not worth serving.

    python -c "from ebr.data.movielens import *; from ebr.eval.als import *; \
tr, te = time_split(load_movielens()[0]); print(als_baseline(tr, te, 944, 1683))"
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ebr.metrics import ndcg_at, recall_at


def _user_items(train: pd.DataFrame, n_users: int, n_items: int) -> sp.csr_matrix:
    """Binary CSR [n_users, n_items]; ids are used as row/column indices directly."""
    users = train["user_id"].to_numpy(np.int64)
    items = train["item_id"].to_numpy(np.int64)
    if len(users) and (
        users.max() >= n_users or items.max() >= n_items or min(users.min(), items.min()) < 0
    ):
        raise ValueError(
            f"ids must lie in [0, n_users={n_users}) x [0, n_items={n_items}), "
            f"got users up to {users.max()} and items up to {items.max()}"
        )
    data = np.ones(len(users), dtype=np.float32)
    matrix = sp.csr_matrix((data, (users, items)), shape=(n_users, n_items))
    matrix.data[:] = 1.0  # duplicate (user, item) rows were summed; keep it binary
    return matrix


def _test_sets(test: pd.DataFrame) -> tuple[np.ndarray, list[set[int]]]:
    """Test users (sorted int64 [q]) and, for each, the set of held-out item ids."""
    grouped = test.groupby("user_id")["item_id"].agg(lambda s: set(s.tolist()))
    return grouped.index.to_numpy(np.int64), list(grouped)


def _metrics(
    ranked: np.ndarray, positives: list[set[int]], k_list: Sequence[int]
) -> dict[str, float]:
    """Recall@k for every k in k_list, NDCG@ the smallest k, plus the number of test users."""
    out = {f"recall@{k}": value for k, value in recall_at(ranked, positives, k_list).items()}
    k_ndcg = min(k_list)
    out[f"ndcg@{k_ndcg}"] = ndcg_at(ranked, positives, k_ndcg)
    out["n_test_users"] = float(len(positives))
    return out


def als_baseline(
    train: pd.DataFrame,
    test: pd.DataFrame,
    n_users: int,
    n_items: int,
    k_list: Sequence[int] = (20, 100),
    factors: int = 64,
    iterations: int = 15,
    seed: int = 0,
    num_threads: int = 2,
    regularization: float = 0.01,
    alpha: float = 1.0,
) -> dict[str, float]:
    """Fit implicit's ALS on the binary train matrix and score top-k retrieval on test.

    Args:
        train, test: frames with ``user_id``/``item_id`` ints in [0, n_users) / [0, n_items),
            e.g. from :func:`ebr.data.movielens.time_split` (so n_users = max user_id + 1).
        k_list: cut-offs; recall at each, binary NDCG at the smallest.
        num_threads: ALS worker threads; kept small so tests share the machine politely.
        regularization, alpha: implicit's L2 weight and confidence scale (its defaults).

    Returns:
        ``{"recall@20", "recall@100", "ndcg@20", "n_test_users"}`` (for the default k_list),
        averaged over test users; the user's train items are never recommended.
    """
    from implicit.als import AlternatingLeastSquares  # heavy import, only when used
    from threadpoolctl import threadpool_limits  # a dependency of implicit

    user_items = _user_items(train, n_users, n_items)
    users, positives = _test_sets(test)
    # implicit runs its own threads; a BLAS pool on top of them oversubscribes (and it warns).
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=factors,
            iterations=iterations,
            regularization=regularization,
            alpha=alpha,
            random_state=seed,
            num_threads=num_threads,
        )
        model.fit(user_items, show_progress=False)
        ids, _ = model.recommend(
            users, user_items[users], N=max(k_list), filter_already_liked_items=True
        )
    return _metrics(np.asarray(ids, dtype=np.int64), positives, k_list)


def popularity_baseline(
    train: pd.DataFrame,
    test: pd.DataFrame,
    n_users: int,
    n_items: int,
    k_list: Sequence[int] = (20, 100),
) -> dict[str, float]:
    """Recommend the most-interacted train items, skipping each user's own train items.

    Same arguments and metrics as :func:`als_baseline`.
    """
    user_items = _user_items(train, n_users, n_items)
    counts = np.asarray(user_items.sum(axis=0)).ravel()
    order = np.argsort(-counts, kind="stable")
    order = order[counts[order] > 0]  # never recommend an item nobody interacted with
    users, positives = _test_sets(test)
    max_k = max(k_list)
    ranked = np.full((len(users), max_k), -1, dtype=np.int64)
    for row, user in enumerate(users):
        seen = user_items.indices[user_items.indptr[user] : user_items.indptr[user + 1]]
        top = order[~np.isin(order, seen)][:max_k]
        ranked[row, : len(top)] = top
    return _metrics(ranked, positives, k_list)
