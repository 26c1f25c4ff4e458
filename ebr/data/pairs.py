"""Training pairs and evaluation searches from the impression log, split by time (no leakage)."""

from __future__ import annotations

import numpy as np
import pandas as pd

POSITIVE = ("click", "save", "apply")


def time_split(impressions: pd.DataFrame, eval_days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train on sessions that started before the last ``eval_days`` days, evaluate on the rest.

    Splitting by session start keeps every impression of a session on one side.
    """
    start = impressions.groupby("session_id")["ts"].transform("min")
    cutoff = impressions["ts"].max() - pd.Timedelta(days=eval_days)
    is_eval = start > cutoff
    train, held = impressions[~is_eval], impressions[is_eval]
    if train.empty or held.empty:
        raise ValueError(f"eval_days={eval_days} leaves an empty train or eval split")
    return train.reset_index(drop=True), held.reset_index(drop=True)


def positive_pairs(impressions: pd.DataFrame) -> pd.DataFrame:
    """(member_id, query, job_id, outcome) rows for engaged impressions (click, save, apply)."""
    pos = impressions[impressions["outcome"].isin(POSITIVE)]
    return pos[["session_id", "member_id", "query", "job_id", "outcome", "ts"]].reset_index(
        drop=True
    )


def eval_searches(impressions: pd.DataFrame, with_query: bool = True) -> pd.DataFrame:
    """One row per held-out session with engagement: session_id, member_id, query, positives,
    ts (the first engagement's time: the request time the session's request is embedded at).

    ``with_query`` picks search sessions (True) or query-less JYMBII feed sessions (False).
    """
    pos = positive_pairs(impressions)
    pos = pos[pos["query"].notna()] if with_query else pos[pos["query"].isna()]
    out = (
        pos.groupby("session_id")
        .agg(
            member_id=("member_id", "first"),
            query=("query", "first"),
            positives=("job_id", set),
            ts=("ts", "min"),
        )
        .reset_index()
    )
    return out


def split_cutoff(impressions: pd.DataFrame, eval_days: int) -> pd.Timestamp:
    """The time split's boundary: sessions starting after it are held out (see time_split)."""
    return pd.Timestamp(impressions["ts"].max() - pd.Timedelta(days=eval_days))


def hard_negatives(
    impressions: pd.DataFrame,
    pairs: pd.DataFrame,
    jobs: pd.DataFrame,
    rng: np.random.Generator,
) -> np.ndarray:
    """One heuristic hard negative job id per positive pair (-1 where none exists).

    Half of the pairs (at random) try a job impressed in the same session but not engaged
    (the member saw it and passed), the other half the same title in another city (teaches
    location, which text alone cannot); each falls back to the other heuristic.

    Args:
        impressions: the log the pairs come from (train split only: no leakage).
        pairs: rows of positive_pairs (session_id, job_id, ...).
        jobs: the catalogue (job_id, title, city).
    Returns:
        int64 [len(pairs)] job ids.
    """
    skipped = impressions[impressions["outcome"] == "none"]
    by_session = {s: g.to_numpy() for s, g in skipped.groupby("session_id", sort=False)["job_id"]}
    title = dict(zip(jobs["job_id"], jobs["title"], strict=True))
    city = dict(zip(jobs["job_id"], jobs["city"], strict=True))
    by_title = {
        t: (g["job_id"].to_numpy(), g["city"].to_numpy())
        for t, g in jobs.groupby("title", sort=False)[["job_id", "city"]]
    }
    out = np.full(len(pairs), -1, dtype=np.int64)
    coin = rng.random(len(pairs)) < 0.5
    for i, (sess, job) in enumerate(zip(pairs["session_id"], pairs["job_id"], strict=True)):
        seen = by_session.get(sess)
        ids, cities = by_title[title[job]]
        twins = ids[cities != city[job]]
        for cand in (seen, twins) if coin[i] else (twins, seen):
            if cand is not None and len(cand):
                out[i] = int(cand[rng.integers(len(cand))])
                break
    return out
