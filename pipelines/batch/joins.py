"""Beam joins that complete member records before embedding (shared by batch pipelines).

``AttachHistory`` adds each member's engagement history (the member-interest model's input),
``AttachInterest`` each member's batch member-interest embedding (the composite request
tower's input), over members that were validated upstream. ``AttachHistory`` takes single
members (a CoGroupByKey by member_id with the engagements); ``AttachInterest`` takes batches
of members and reads the interest table as a side input. Both return ``Checked(records,
dead_letter)``:

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

import contextlib
from collections import Counter
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
from pipelines.batches import Batch, ReadBatches, batch_records
from pipelines.deadletter import DEAD, Checked, ValidateBatches, dead_letter, readable_id

READ_BATCH = 4096  # rows per element when a join reads a whole side table
WITHOUT_INTEREST = "the member is embedded without interest (has_interest 0)"


def _utc(value: Any) -> pd.Timestamp:
    """A timestamp in UTC (naive ones are read as UTC, as everywhere in the workspace)."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


class _EngagedEvents(beam.DoFn):
    """a batch of impressions -> (member_id, (ts, title of the job)) for each engagement
    before ``before``; an impression the history cannot use -> a dead letter."""

    def __init__(self, before: pd.Timestamp | None) -> None:
        self._before = before

    def process(self, batch: Batch, titles: Mapping[int, str]) -> Iterable[Any]:
        for r in batch_records(batch):
            yield from self._event(r, titles)

    def _event(self, r: Mapping[str, Any], titles: Mapping[int, str]) -> Iterable[Any]:
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
            >> ReadBatches(self._ws.data / "jobs.parquet", READ_BATCH, ["job_id", "title"])
            | "CheckTitles"
            >> ValidateBatches("jobs", stage="join_history", required=("job_id", "title"))
        )
        title_kv = titles.records | "TitleKV" >> beam.FlatMap(
            lambda batch: [(int(r["job_id"]), str(r["title"])) for r in batch]
        )
        events = (
            p
            | "ReadImpressions"
            >> ReadBatches(
                self._ws.data / "impressions.parquet",
                READ_BATCH,
                ["member_id", "job_id", "outcome", "ts"],
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


class _InterestVectors(beam.DoFn):
    """a batch of interest rows -> one {member_id: embedding} of its finite unit vectors of
    ``dim``; each other row -> a dead letter."""

    def __init__(self, dim: int) -> None:
        self._dim = dim

    def process(self, batch: Batch) -> Iterable[Any]:
        found: list[tuple[int, np.ndarray]] = []
        for r in batch_records(batch):
            key = readable_id(r, "member_id")
            emb = r.get("embedding")
            why: tuple[str, str] | None = None
            vec = np.zeros(0)
            if key is None or key < 0:
                why = ("member_id", "must be an integer >= 0")
            elif emb is None:
                why = ("embedding", "null")
            else:
                with contextlib.suppress(ValueError, TypeError):
                    vec = np.asarray(emb, dtype=np.float64)
                problem = vector_problem(vec, self._dim)
                if problem is not None:
                    why = ("embedding", problem)
            if why is not None:
                field, reason = why
                yield dead_letter(
                    "join_interest", "interest", key, field, f"{reason}; {WITHOUT_INTEREST}", r
                )
                continue
            found.append((key, vec.astype(np.float32)))  # type: ignore[arg-type]  # an int here
        if found:
            yield found


class _InterestTable(beam.CombineFn):  # type: ignore[misc]  # Beam's classes are untyped
    """Batches of (member_id, vector) -> ({member_id: vector} of the ids found once, {id:
    copies} of the ids found more than once). All on one worker: 128 bytes per member at
    dim 32 (1.3 GB at 10M members; a CoGroupByKey join would spread it, at a per-member
    element cost)."""

    def create_accumulator(self) -> tuple[dict[int, np.ndarray], Counter[int]]:
        return {}, Counter()

    def add_input(
        self, acc: tuple[dict[int, np.ndarray], Counter[int]], found: list[tuple[int, np.ndarray]]
    ) -> tuple[dict[int, np.ndarray], Counter[int]]:
        vectors, copies = acc
        for key, vec in found:
            vectors[key] = vec
            copies[key] += 1
        return acc

    def merge_accumulators(
        self, accs: Iterable[tuple[dict[int, np.ndarray], Counter[int]]]
    ) -> tuple[dict[int, np.ndarray], Counter[int]]:
        vectors: dict[int, np.ndarray] = {}
        copies: Counter[int] = Counter()
        for v, c in accs:
            vectors.update(v)
            copies.update(c)
        return vectors, copies

    def extract_output(
        self, acc: tuple[dict[int, np.ndarray], Counter[int]]
    ) -> tuple[dict[int, np.ndarray], dict[int, int]]:
        vectors, copies = acc
        repeated = {k: n for k, n in copies.items() if n > 1}
        return {k: v for k, v in vectors.items() if k not in repeated}, repeated


def _repeated_rows(table: tuple[dict[int, np.ndarray], dict[int, int]]) -> Iterable[Any]:
    for key, n in sorted(table[1].items()):
        why = f"member_id repeated in the interest table ({n} rows); "
        row = dead_letter("join_interest", "interest", key, "member_id", why + WITHOUT_INTEREST)
        yield row.value


def _attach(
    batch: list[dict[str, Any]], table: tuple[dict[int, np.ndarray], dict[int, int]]
) -> list[dict[str, Any]]:
    vectors = table[0]
    return [{**rec, "interest": vectors.get(int(rec["member_id"]))} for rec in batch]


class AttachInterest(beam.PTransform):
    """batches of validated members -> ``Checked``: the same batches, each member with
    ``interest``, its batch member-interest embedding of ``dim`` floats (None for a member the
    interest run has not embedded, or whose interest row was refused; the tower sees
    has_interest = 0). The interest table reaches every worker as one side input."""

    def __init__(self, table: Path, dim: int) -> None:
        super().__init__()
        self._table, self._dim = table, dim

    def expand(self, members: beam.PCollection) -> Checked:
        vectors = (
            members.pipeline
            | "ReadInterest" >> ReadBatches(self._table, READ_BATCH, ["member_id", "embedding"])
            | "CheckInterest"
            >> beam.ParDo(_InterestVectors(self._dim)).with_outputs(DEAD, main="ok")
        )
        table = vectors.ok | "Table" >> beam.CombineGlobally(_InterestTable())
        repeated = table | "Repeated" >> beam.FlatMap(_repeated_rows)
        joined = members | "Attach" >> beam.Map(_attach, beam.pvalue.AsSingleton(table))
        dead = (vectors[DEAD], repeated) | "DeadLetters" >> beam.Flatten()
        return Checked(joined, dead)
