"""MovieLens-100k, read in place from the copy that ships inside the recbole package.

The GroupLens terms forbid redistribution, so the files are never copied into this repo: we
only locate recbole's data folder (without importing recbole, whose dependencies are not
installed) and parse the atomic files it ships.

    pip install --no-deps recbole==1.2.1
    python -c "from ebr.data.movielens import load_movielens; print(load_movielens()[0].head())"
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

INSTALL_HINT = "pip install --no-deps recbole==1.2.1"
_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")


def movielens_dir() -> Path:
    """Return the folder holding recbole's packaged ``ml-100k`` atomic files.

    Raises:
        FileNotFoundError: recbole is not installed, or its copy lacks the ml-100k files.
    """
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"MovieLens-100k is read from the recbole package, which is not installed: "
            f"run `{INSTALL_HINT}`"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"
    missing = [name for name in _FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"expected {missing} in {folder}; reinstall with `{INSTALL_HINT}`")
    return folder


def _read_atomic(path: Path) -> pd.DataFrame:
    """Read a recbole atomic file: tab-separated, header ``name:type``; we keep only ``name``."""
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    frame.columns = [col.split(":", 1)[0] for col in frame.columns]
    return frame


def load_movielens(folder: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Load MovieLens-100k as ``(interactions, users, items)``.

    Returns:
        interactions: ``user_id`` int64, ``item_id`` int64, ``rating`` float64 (1-5 stars),
            ``ts`` datetime64[ns, UTC]; 100,000 rows, sorted by ``ts`` then ids.
        users: index-free frame with ``user_id`` int64, ``age`` int64 (years), ``gender``
            str ("M"/"F"), ``occupation`` str, ``zip`` str (not numeric: some are Canadian).
        items: ``item_id`` int64, ``title`` str, ``year`` nullable Int64 (release year, missing
            for a handful of titles), ``genres`` list[str].
    """
    folder = movielens_dir() if folder is None else folder

    raw = _read_atomic(folder / "ml-100k.inter")
    interactions = pd.DataFrame(
        {
            "user_id": raw["user_id"].astype("int64"),
            "item_id": raw["item_id"].astype("int64"),
            "rating": raw["rating"].astype("float64"),
            "ts": pd.to_datetime(
                raw["timestamp"].astype("float64").astype("int64"), unit="s", utc=True
            ),
        }
    )
    interactions = interactions.sort_values(["ts", "user_id", "item_id"], kind="stable")
    interactions = interactions.reset_index(drop=True)

    raw = _read_atomic(folder / "ml-100k.user")
    users = pd.DataFrame(
        {
            "user_id": raw["user_id"].astype("int64"),
            "age": raw["age"].astype("int64"),
            "gender": raw["gender"],
            "occupation": raw["occupation"],
            "zip": raw["zip_code"],
        }
    )

    raw = _read_atomic(folder / "ml-100k.item")
    items = pd.DataFrame(
        {
            "item_id": raw["item_id"].astype("int64"),
            "title": raw["movie_title"],
            "year": pd.to_numeric(raw["release_year"], errors="coerce").astype("Int64"),
            # token_seq fields are space-separated tokens; genres never contain spaces.
            "genres": raw["class"].map(lambda s: s.split() if s else []),
        }
    )
    return interactions, users, items


def time_split(
    interactions: pd.DataFrame, test_fraction: float = 0.2, min_rating: float = 4.0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split positive interactions at one global point in time, so nothing from the future leaks.

    1. Implicit feedback: keep rows with ``rating >= min_rating`` (4-5 stars = "liked").
    2. Cut at the ``1 - test_fraction`` quantile of the positives' timestamps: train holds rows
       with ``ts <= cut``, test rows with ``ts > cut`` (so ``max(train.ts) <= min(test.ts)``).
    3. Test keeps only users with at least one train interaction and items seen in train: a
       factor model cannot score a cold user or item, and we measure warm-start retrieval.

    Because of step 3 test is much smaller than ``test_fraction``: on ML-100k most late ratings
    come from users who joined after the cut, so 44,300 train rows leave 1,459 test rows from
    90 warm users (of 11,075 later positives). Metrics on it are noisy; compare on one seed.

    Args:
        interactions: frame from :func:`load_movielens` (``user_id``, ``item_id``, ``rating``,
            ``ts``).
        test_fraction: share of positive interactions (by time) to hold out, in (0, 1).
        min_rating: smallest rating counted as a positive.

    Returns:
        ``(train, test)`` with the input's columns, each sorted by ``ts``, fresh indexes.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    missing = {"user_id", "item_id", "rating", "ts"} - set(interactions.columns)
    if missing:
        raise ValueError(f"interactions lack columns {sorted(missing)}")
    positives = interactions[interactions["rating"] >= min_rating]
    if positives.empty:
        raise ValueError(f"no interaction has rating >= {min_rating}")
    positives = positives.sort_values("ts", kind="stable")
    cut = positives["ts"].quantile(1.0 - test_fraction)
    train = positives[positives["ts"] <= cut]
    test = positives[positives["ts"] > cut]
    warm = test["user_id"].isin(set(train["user_id"])) & test["item_id"].isin(set(train["item_id"]))
    return train.reset_index(drop=True), test[warm].reset_index(drop=True)
