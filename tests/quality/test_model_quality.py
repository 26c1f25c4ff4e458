"""Model-quality floors: the models learn what the data holds (they train, so they are slow;
``make test-fast`` leaves them out). Behaviour of the same code is in ``tests/unit``."""

from __future__ import annotations

import pandas as pd
import pytest

from ebr.config import DataConfig, ModelConfig, TrainConfig
from ebr.data.marketplace import generate
from ebr.eval.als import als_baseline
from ebr.model.train import train

pytestmark = pytest.mark.slow
CFG = ModelConfig(hash_buckets=4096, cat_buckets=512, token_dim=16, hidden=32, dim=16)


def test_training_learns_beyond_chance() -> None:
    mp = generate(DataConfig(n_jobs=1500, seed=5))
    _, metrics = train(
        mp.jobs, mp.members, mp.impressions, CFG, TrainConfig(epochs=6, batch_size=128)
    )
    assert metrics["loss_curve"][-1] < metrics["loss_curve"][0]
    chance = 100 / 1500
    # A query retrieves its held-out positive in the top 100 far more often than chance.
    assert metrics["search_recall@100"] > 4 * chance, metrics


def test_two_tower_beats_als_on_the_same_split(
    movielens: tuple[pd.DataFrame, ...], split: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    """The marketplace's Tower / loss / fit on real data: Recall@20 >= ALS (64 factors)."""
    from ebr.model.movielens import evaluate_movielens, train_movielens

    _, users, items = movielens
    train, test = split
    n_users, n_items = int(users["user_id"].max()) + 1, int(items["item_id"].max()) + 1
    als = als_baseline(train, test, n_users, n_items)
    model, fit = train_movielens(train, users, items, TrainConfig(epochs=3, batch_size=256))
    assert fit["loss_curve"][-1] < fit["loss_curve"][0]
    got = evaluate_movielens(model, train, test, users, items)
    assert got["n_test_users"] == als["n_test_users"] == 90
    assert got["recall@20"] >= als["recall@20"], (got, als)
