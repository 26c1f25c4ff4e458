"""Job and company popularity from past engagement: trailing-window counts, one snapshot a day.

    jobs_pop, companies_pop = popularity_tables(impressions, jobs)

Each table is a Feast-style change log: a row (key, ``event_timestamp`` = a day boundary D,
counts over [D - WINDOW_DAYS, D)) wherever a key's counts differ from its previous snapshot
(a drop to zero included), so a point-in-time lookup (the latest row at or before a time)
gives the counts as of the last day boundary before it, and nothing engaged on or after it.
Feast serves the same tables (views ``job_popularity`` / ``company_popularity``, refreshed by
every ``feature_repo.store.publish``); training joins them with ``as_of`` on the same rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ebr.feast_names import POPULARITY_DAYS, popularity_names

WINDOW_DAYS = POPULARITY_DAYS
COUNTS = ("impressions", "clicks", "applies")  # clicks: any engagement (click, save, apply)
JOB_FIELDS = popularity_names("job").fields  # job_impressions_7d, job_clicks_7d, ...
COMPANY_FIELDS = popularity_names("company").fields


def _daily(impressions: pd.DataFrame, key: pd.Series) -> tuple[pd.DataFrame, pd.DatetimeIndex]:
    """Counts per (key, UTC day) [keys x days x COUNTS] as a frame indexed by key, and the
    days."""
    day = impressions["ts"].dt.floor("D")
    outcome = impressions["outcome"].astype(str)
    frame = pd.DataFrame(
        {
            "key": key.to_numpy(),
            "day": day.to_numpy(),
            "impressions": 1,
            "clicks": outcome.isin(["click", "save", "apply"]).to_numpy(int),
            "applies": (outcome == "apply").to_numpy(int),
        }
    )
    frame = frame[frame["key"].notna()]
    days = pd.date_range(day.min(), day.max() + pd.Timedelta(days=1), freq="D")
    return frame.groupby(["key", "day"])[list(COUNTS)].sum(), days


def _snapshots(counts: pd.DataFrame, days: pd.DatetimeIndex, fields: tuple[str, ...],
               key_name: str) -> pd.DataFrame:  # fmt: skip
    """The change log of trailing-window sums (module docstring) from daily ``counts``."""
    keys = counts.index.get_level_values("key").unique()
    out = []
    for c in COUNTS:
        dense = counts[c].unstack("day", fill_value=0).reindex(columns=days, fill_value=0)
        dense = dense.reindex(keys).to_numpy(np.int64)  # [keys, days]: count of day d
        cum = np.concatenate([np.zeros((len(keys), 1), np.int64), dense.cumsum(axis=1)], axis=1)
        # snapshot at boundary days[b]: days[b - W] .. days[b - 1]
        b = np.arange(len(days))
        out.append(cum[:, b] - cum[:, np.maximum(b - WINDOW_DAYS, 0)])
    stacked = np.stack(out, axis=2)  # [keys, boundaries, fields]
    prev = np.concatenate([np.zeros_like(stacked[:, :1]), stacked[:, :-1]], axis=1)
    changed = (stacked != prev).any(axis=2)
    changed[:, 0] = False  # the first boundary sees no day before it: all zero
    ki, bi = np.nonzero(changed)
    table = pd.DataFrame({key_name: keys.to_numpy()[ki], "event_timestamp": days[bi]})
    for j, field in enumerate(fields):
        table[field] = stacked[ki, bi, j]
    return table.sort_values([key_name, "event_timestamp"], kind="stable").reset_index(drop=True)


def popularity_tables(
    impressions: pd.DataFrame, jobs: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(job table: job_id, event_timestamp, JOB_FIELDS; company table: company,
    event_timestamp, COMPANY_FIELDS) from the impression log (``ts``, ``job_id``,
    ``outcome``) and the catalogue (``job_id``, ``company``). Impressions of jobs the
    catalogue lacks count for the job, not for a company."""
    if impressions.empty:
        return (
            pd.DataFrame({"job_id": pd.Series(dtype="int64"),
                          "event_timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
                          **{f: pd.Series(dtype="int64") for f in JOB_FIELDS}}),
            pd.DataFrame({"company": pd.Series(dtype="object"),
                          "event_timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
                          **{f: pd.Series(dtype="int64") for f in COMPANY_FIELDS}}),
        )  # fmt: skip
    counts, days = _daily(impressions, impressions["job_id"].astype("int64"))
    job_table = _snapshots(counts, days, JOB_FIELDS, "job_id")
    job_table["job_id"] = job_table["job_id"].astype("int64")
    company_of = pd.Series(jobs["company"].to_numpy(), index=jobs["job_id"].to_numpy())
    company = impressions["job_id"].map(company_of)
    counts, days = _daily(impressions, company)
    company_table = _snapshots(counts, days, COMPANY_FIELDS, "company")
    company_table["company"] = company_table["company"].astype(str)
    return job_table, company_table


def as_of(table: pd.DataFrame, key: str, keys: pd.Series | np.ndarray,
          when: pd.Series | np.ndarray) -> pd.DataFrame:  # fmt: skip
    """Point-in-time lookup: per (key, time) pair, the fields of ``table``'s latest row with
    ``event_timestamp`` <= the time (0 where none), in the pairs' order (what Feast's
    historical join returns for the same rows)."""
    fields = [c for c in table.columns if c not in (key, "event_timestamp")]
    left = pd.DataFrame({key: np.asarray(keys), "event_timestamp": pd.to_datetime(when, utc=True)})
    left["_row"] = np.arange(len(left))
    right = table.astype({key: left[key].dtype}) if len(table) else table
    joined = pd.merge_asof(
        left.sort_values("event_timestamp", kind="stable"),
        right.sort_values("event_timestamp", kind="stable"),
        on="event_timestamp",
        by=key,
        direction="backward",
    ).sort_values("_row")
    return joined[fields].fillna(0).astype("int64").reset_index(drop=True)
