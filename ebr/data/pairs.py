"""Training pairs and evaluation searches from the impression log, split by time (no leakage)."""

from __future__ import annotations

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
    """One row per held-out session with engagement: session_id, member_id, query, positives.

    ``with_query`` picks search sessions (True) or query-less JYMBII feed sessions (False).
    """
    pos = positive_pairs(impressions)
    pos = pos[pos["query"].notna()] if with_query else pos[pos["query"].isna()]
    out = (
        pos.groupby("session_id")
        .agg(member_id=("member_id", "first"), query=("query", "first"), positives=("job_id", set))
        .reset_index()
    )
    return out
