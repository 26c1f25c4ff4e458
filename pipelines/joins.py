"""Beam joins that complete member records before embedding (shared by batch pipelines).

``AttachHistory`` adds each member's engagement history (the member-interest model's input),
``AttachInterest`` each member's batch member-interest embedding (the composite request
tower's input). Both are CoGroupByKey joins keyed by member_id over members that were
validated upstream, and both return ``Checked(records, dead_letter)``:

- a job whose id or title breaks the record contract, or an impression with an unreadable
  id, outcome or time, or of a job that is not among the valid ones, is left out of every
  history and dead-lettered (stage ``join_history``);
- a malformed interest row (null, wrong width, non-finite, not a unit vector, an unreadable or
  repeated member_id) is dead-lettered (stage ``join_interest``, kind ``interest``) and the
  member is embedded WITHOUT interest (has_interest 0), as a member the interest run has not
  reached yet would be: a member embedding stays available, and the dead letter says why it
  lacks the interest signal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pandas as pd

from ebr.config import Workspace
from ebr.data.records import vector_problem
from ebr.model.interest import history_text
from pipelines.deadletter import (
    DEAD,
    Checked,
    ValidateRecords,
    dead_letter,
    readable_id,
)

WITHOUT_INTEREST = "the member is embedded without interest (has_interest 0)"


def _utc(value: Any) -> pd.Timestamp:
    """A timestamp in UTC (naive ones are read as UTC, as everywhere in the workspace)."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


class _EngagedEvents(beam.DoFn):
    """impression -> (member_id, (ts, title of the job)) for an engagement before ``before``;
    an impression the history cannot use -> a dead letter."""

    def __init__(self, before: pd.Timestamp | None) -> None:
        self._before = before

    def process(self, r: Mapping[str, Any], titles: Mapping[int, str]) -> Iterable[Any]:
        member, job = readable_id(r, "member_id"), readable_id(r, "job_id")
        problem: tuple[str, str] | None = None
        if member is None or member < 0:
            problem = ("member_id", "must be an integer >= 0")
        elif job is None or job < 0:
            problem = ("job_id", "must be an integer >= 0")
        elif not isinstance(r.get("outcome"), str):
            problem = ("outcome", "must be a string")
        else:
            try:
                ts = _utc(r.get("ts"))
                if pd.isna(ts):
                    raise ValueError("null")
            except (ValueError, TypeError, OverflowError):
                problem = ("ts", "must be a timestamp")
        if problem is not None:
            yield dead_letter("join_history", "impressions", None, *problem, r)
            return
        if r["outcome"] == "none" or (self._before is not None and ts >= self._before):
            return  # not an engagement of the history's window
        title = titles.get(job)  # type: ignore[arg-type]  # job is an int here
        if title is None:
            why = f"job {job} is not a valid job of jobs.parquet; left out of the history"
            yield dead_letter("join_history", "impressions", None, "job_id", why, r)
            return
        yield member, (r["ts"], title)


class AttachHistory(beam.PTransform):
    """members -> ``Checked``: members with ``history``, the titles of the jobs each engaged
    with before ``before`` (the same ebr.model.interest.history_text the training snapshots
    use)."""

    def __init__(self, ws: Workspace, before: datetime | None) -> None:
        super().__init__()
        self._ws = ws
        self._before = None if before is None else _utc(before)

    def expand(self, members: beam.PCollection) -> Checked:
        p = members.pipeline
        titles = (
            p
            | "ReadTitles"
            >> beam.io.ReadFromParquet(
                str(self._ws.data / "jobs.parquet"), columns=["job_id", "title"]
            )
            | "CheckTitles"
            >> ValidateRecords("jobs", stage="join_history", required=("job_id", "title"))
        )
        title_kv = titles.records | "TitleKV" >> beam.Map(
            lambda r: (int(r["job_id"]), str(r["title"]))
        )
        events = (
            p
            | "ReadImpressions"
            >> beam.io.ReadFromParquet(
                str(self._ws.data / "impressions.parquet"),
                columns=["member_id", "job_id", "outcome", "ts"],
            )
            | "Engaged"
            >> beam.ParDo(
                _EngagedEvents(self._before), titles=beam.pvalue.AsDict(title_kv)
            ).with_outputs(DEAD, main="events")
        )
        keyed = members | "MemberKV" >> beam.Map(lambda r: (int(r["member_id"]), r))

        def attach(kv: tuple[int, dict[str, list[Any]]]) -> Iterable[dict[str, Any]]:
            _, grouped = kv
            for rec in grouped["member"]:  # exactly one profile per member id
                yield {**rec, "history": history_text(grouped["events"])}

        attached = (
            {"member": keyed, "events": events.events}
            | "JoinHistory" >> beam.CoGroupByKey()
            | "Attach" >> beam.FlatMap(attach)
        )
        dead = (titles.dead_letter, events[DEAD]) | "DeadLetters" >> beam.Flatten()
        return Checked(attached, dead)


class _InterestVector(beam.DoFn):
    """interest row -> (member_id, embedding) when it is a finite unit vector of ``dim``; else
    a dead letter."""

    def __init__(self, dim: int) -> None:
        self._dim = dim

    def process(self, r: Mapping[str, Any]) -> Iterable[Any]:
        key = readable_id(r, "member_id")
        emb = r.get("embedding")
        why: tuple[str, str] | None = None
        if key is None or key < 0:
            why = ("member_id", "must be an integer >= 0")
        elif emb is None:
            why = ("embedding", "null")
        else:
            try:
                vec = np.asarray(emb, dtype=np.float64)
            except (ValueError, TypeError):
                vec = np.zeros(0)
            problem = vector_problem(vec, self._dim)
            if problem is not None:
                why = ("embedding", problem)
        if why is not None:
            field, reason = why
            yield dead_letter(
                "join_interest", "interest", key, field, f"{reason}; {WITHOUT_INTEREST}", r
            )
            return
        yield key, emb


class AttachInterest(beam.PTransform):
    """members -> ``Checked``: members with ``interest``, their batch member-interest
    embedding of ``dim`` floats (None for a member the interest run has not embedded, or
    whose interest row was refused; the tower sees has_interest = 0)."""

    def __init__(self, table: Path, dim: int) -> None:
        super().__init__()
        self._table, self._dim = table, dim

    def expand(self, members: beam.PCollection) -> Checked:
        vectors = (
            members.pipeline
            | "ReadInterest"
            >> beam.io.ReadFromParquet(str(self._table), columns=["member_id", "embedding"])
            | "CheckInterest"
            >> beam.ParDo(_InterestVector(self._dim)).with_outputs(DEAD, main="ok")
        )
        keyed = members | "MemberKV" >> beam.Map(lambda r: (int(r["member_id"]), r))

        def attach(kv: tuple[int, dict[str, list[Any]]]) -> Iterable[Any]:
            key, grouped = kv
            found = grouped["interest"]
            if len(found) > 1:
                why = f"member_id repeated in the interest table ({len(found)} rows); "
                yield dead_letter(
                    "join_interest", "interest", key, "member_id", why + WITHOUT_INTEREST
                )
            vec = found[0] if len(found) == 1 else None
            for rec in grouped["member"]:
                yield {**rec, "interest": vec}

        joined = (
            {"member": keyed, "interest": vectors.ok}
            | "JoinInterest" >> beam.CoGroupByKey()
            | "Attach" >> beam.FlatMap(attach).with_outputs(DEAD, main="members")
        )
        dead = (vectors[DEAD], joined[DEAD]) | "DeadLetters" >> beam.Flatten()
        return Checked(joined.members, dead)
