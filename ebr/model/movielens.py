"""The two-tower code path on real data: MovieLens-100k users (request side) and movies (items).

    python -m benchmarks.models --movielens-only      # two-tower vs ALS vs popularity

Users: age, gender, occupation, zip prefix, and the movies they liked before the request time
(the history; hashed movie tokens in the shared text table, the same tokens the movie tower
reads for its own identity, so a history and the movies in it start close). Movies: title
words, genres, release year. Same Tower, loss and ``fit`` as the job marketplace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from ebr.config import ModelConfig, TrainConfig
from ebr.metrics import ndcg_at, recall_at
from ebr.model.features import cat_id, stack, text_ids
from ebr.model.towers import TowerSpec, TwoTower

HISTORY = 50  # most recent liked movies a user is represented by
USER_SPEC = TowerSpec(texts=("history",), n_cats=4, n_nums=1)
ITEM_SPEC = TowerSpec(texts=("title", "genres", "movie"), n_cats=2, n_nums=0)


def movielens_config() -> ModelConfig:
    return ModelConfig(schema="movielens", tasks=(), hash_buckets=2**16)


def _movie_token(item_id: int, cfg: ModelConfig) -> int:
    return cat_id("movie", int(item_id), cfg.hash_buckets)


def item_batch(items: pd.DataFrame, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Movie inputs: title [16], genres [8], movie [1] int64; cats (year, decade) [2]."""
    b = cfg.hash_buckets
    years = items["year"].astype("float64").fillna(0).astype(int).to_numpy()
    return {
        "title": np.stack([text_ids(t, 16, b) for t in items["title"]]),
        "genres": np.stack([text_ids(" ".join(g), 8, b) for g in items["genres"]]),
        "movie": np.array([[_movie_token(i, cfg)] for i in items["item_id"]], dtype=np.int64),
        "cats": np.array(
            [
                [
                    cat_id("year", y or None, cfg.cat_buckets),
                    cat_id("decade", y // 10 or None, cfg.cat_buckets),
                ]
                for y in years
            ],
            dtype=np.int64,
        ),
        "nums": np.zeros((len(items), 0), dtype=np.float32),
    }


def user_tensors(user: dict[str, Any], history: Sequence[int], cfg: ModelConfig) -> dict[str, Any]:
    """User inputs: history int64 [50] (most recent last), cats [4], nums [1] (age / 100)."""
    hist = np.zeros(HISTORY, dtype=np.int64)
    recent = [_movie_token(i, cfg) for i in list(history)[-HISTORY:]]
    hist[: len(recent)] = recent
    c = cfg.cat_buckets
    cats = [
        cat_id("gender", user["gender"], c),
        cat_id("occupation", user["occupation"], c),
        cat_id("age", int(user["age"]) // 10, c),
        cat_id("zip", str(user["zip"])[:3], c),
    ]
    return {
        "history": hist,
        "cats": np.array(cats, dtype=np.int64),
        "nums": np.array([float(user["age"]) / 100.0], dtype=np.float32),
    }


def train_movielens(
    train: pd.DataFrame,
    users: pd.DataFrame,
    items: pd.DataFrame,
    tcfg: TrainConfig,
) -> tuple[TwoTower, dict[str, Any]]:
    """Fit on the train split: pair (user with the likes before it, liked movie)."""
    from ebr.model.fit import PairData, fit

    cfg = movielens_config()
    recs = {int(u["user_id"]): u for u in users.to_dict("records")}
    item_row = pd.Series(np.arange(len(items)), index=items["item_id"].to_numpy())
    rows: list[dict[str, Any]] = []
    pair_items: list[int] = []
    for uid, g in train.sort_values("ts", kind="stable").groupby("user_id", sort=False):
        liked = g["item_id"].tolist()
        for j, item in enumerate(liked):
            rows.append(user_tensors(recs[int(uid)], liked[max(0, j - HISTORY) : j], cfg))
            pair_items.append(int(item))
    data = PairData(
        req=stack(rows),
        item=item_batch(items, cfg),
        pair_item=item_row.loc[pair_items].to_numpy(),
    )
    model = TwoTower(cfg, (USER_SPEC, ITEM_SPEC))
    metrics = fit(model, data, replace(tcfg, hard_negatives=False, task_weights=()))
    return model, metrics


def evaluate_movielens(
    model: TwoTower,
    train: pd.DataFrame,
    test: pd.DataFrame,
    users: pd.DataFrame,
    items: pd.DataFrame,
    k_list: Sequence[int] = (20, 100),
) -> dict[str, float]:
    """Recall@k and NDCG@min(k) over test users; a user's train movies are never recommended
    (the same protocol as ebr.eval.als)."""
    from ebr.model.infer import run_tower

    cfg = model.cfg
    recs = {int(u["user_id"]): u for u in users.to_dict("records")}
    by_user = train.sort_values("ts", kind="stable").groupby("user_id")["item_id"].agg(list)
    truth = test.groupby("user_id")["item_id"].agg(lambda s: set(s.tolist()))
    q = run_tower(
        model.request, stack([user_tensors(recs[u], by_user[u], cfg) for u in truth.index])
    )
    v = run_tower(model.item, item_batch(items, cfg))
    scores = q @ v.T  # [users, items]
    ids = items["item_id"].to_numpy()
    k_max = max(k_list)
    ranked = np.full((len(truth), k_max), -1, dtype=np.int64)
    for r, u in enumerate(truth.index):
        s = scores[r].copy()
        s[np.isin(ids, by_user[u])] = -np.inf
        top = np.argsort(-s, kind="stable")[:k_max]
        ranked[r] = ids[top]
    positives = truth.tolist()
    out = {f"recall@{k}": v for k, v in recall_at(ranked, positives, list(k_list)).items()}
    out[f"ndcg@{min(k_list)}"] = ndcg_at(ranked, positives, min(k_list))
    out["n_test_users"] = float(len(positives))
    return out
