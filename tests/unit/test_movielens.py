"""MovieLens-100k loader, leak-free time split and the ALS / popularity baselines (offline)."""

from __future__ import annotations

import pandas as pd
import pytest

from ebr.data.movielens import movielens_dir, time_split
from ebr.eval.als import als_baseline, popularity_baseline


def test_files_are_read_in_place() -> None:
    folder = movielens_dir()
    assert (folder / "ml-100k.inter").is_file()
    assert "site-packages" in str(folder) or "recbole" in str(folder)


def test_sizes_columns_and_dtypes(movielens: tuple[pd.DataFrame, ...]) -> None:
    interactions, users, items = movielens
    assert len(interactions) == 100_000
    assert len(users) == interactions["user_id"].nunique() == 943
    assert len(items) == interactions["item_id"].nunique() == 1682
    assert list(interactions.columns) == ["user_id", "item_id", "rating", "ts"]
    assert list(users.columns) == ["user_id", "age", "gender", "occupation", "zip"]
    assert list(items.columns) == ["item_id", "title", "year", "genres"]
    assert interactions["user_id"].dtype == "int64"
    assert interactions["item_id"].dtype == "int64"
    assert interactions["rating"].dtype == "float64"
    assert str(interactions["ts"].dtype) == "datetime64[ns, UTC]"
    assert interactions["rating"].between(1, 5).all()
    assert interactions["ts"].is_monotonic_increasing
    assert users["age"].dtype == "int64"
    assert set(users["gender"]) == {"M", "F"}
    toy_story = items.set_index("item_id").loc[1]
    assert toy_story["title"] == "Toy Story"
    assert toy_story["year"] == 1995
    assert toy_story["genres"] == ["Animation", "Children's", "Comedy"]
    assert all(isinstance(g, list) for g in items["genres"])


def test_time_split_has_no_leakage(split: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train, test = split
    assert len(train) > 0 and len(test) > 0
    assert (train["rating"] >= 4.0).all() and (test["rating"] >= 4.0).all()
    assert train["ts"].max() <= test["ts"].min()
    assert set(test["user_id"]) <= set(train["user_id"])
    assert set(test["item_id"]) <= set(train["item_id"])
    # No (user, item) pair is in both: a rating is one event, on one side of the cut.
    pairs = train.merge(test, on=["user_id", "item_id"])
    assert pairs.empty


def test_time_split_rejects_bad_fraction(movielens: tuple[pd.DataFrame, ...]) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        time_split(movielens[0], test_fraction=1.0)


def test_baselines_on_the_real_split(
    movielens: tuple[pd.DataFrame, ...], split: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    interactions = movielens[0]
    train, test = split
    n_users = int(interactions["user_id"].max()) + 1
    n_items = int(interactions["item_id"].max()) + 1
    als = als_baseline(train, test, n_users, n_items, seed=0)  # timed in benchmarks.movielens
    pop = popularity_baseline(train, test, n_users, n_items)
    for metrics in (als, pop):
        assert set(metrics) == {"recall@20", "recall@100", "ndcg@20", "n_test_users"}
        assert metrics["n_test_users"] == test["user_id"].nunique()
        for key in ("recall@20", "recall@100", "ndcg@20"):
            assert 0.0 <= metrics[key] <= 1.0, (key, metrics)
        assert metrics["recall@100"] >= metrics["recall@20"]
        # Random ranking over ~1.6k items would give recall@20 ~ 0.01: both learn something.
        assert metrics["recall@20"] > 0.05, metrics
    # ALS (64 factors) does NOT beat popularity on this global-time split (only ~90 warm test
    # users, whose late ratings favour popular films), so we assert no ordering between them.


def test_als_is_deterministic_for_a_seed(split: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train, test = split
    first = als_baseline(train, test, 944, 1683, factors=16, iterations=5, seed=3)
    second = als_baseline(train, test, 944, 1683, factors=16, iterations=5, seed=3)
    assert first == pytest.approx(second)
