"""Beam joins that complete member records before embedding (shared by batch pipelines).

``AttachHistory`` adds each member's engagement history (the member-interest model's input),
``AttachInterest`` each member's batch member-interest embedding (the composite request
tower's input). Both are CoGroupByKey joins keyed by member_id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import apache_beam as beam
import pandas as pd

from ebr.config import Workspace
from ebr.model.interest import history_text


class AttachHistory(beam.PTransform):
    """members -> members with ``history``: the titles of the jobs each engaged with before
    ``before`` (the same ebr.model.interest.history_text the training snapshots use)."""

    def __init__(self, ws: Workspace, before: datetime | None) -> None:
        super().__init__()
        self._ws, self._before = ws, before

    def expand(self, members: beam.PCollection) -> beam.PCollection:
        before = self._before
        p = members.pipeline
        titles = (
            p
            | "ReadTitles"
            >> beam.io.ReadFromParquet(
                str(self._ws.data / "jobs.parquet"), columns=["job_id", "title"]
            )
            | "TitleKV" >> beam.Map(lambda r: (int(r["job_id"]), str(r["title"])))
        )

        def engaged(r: Mapping[str, Any]) -> bool:
            ts = pd.Timestamp(r["ts"])
            return r["outcome"] != "none" and (before is None or ts < pd.Timestamp(before))

        events = (
            p
            | "ReadImpressions"
            >> beam.io.ReadFromParquet(
                str(self._ws.data / "impressions.parquet"),
                columns=["member_id", "job_id", "outcome", "ts"],
            )
            | "Engaged" >> beam.Filter(engaged)
            | "EventKV"
            >> beam.Map(
                lambda r, t: (int(r["member_id"]), (r["ts"], t[int(r["job_id"])])),
                t=beam.pvalue.AsDict(titles),
            )
        )
        keyed = members | "MemberKV" >> beam.Map(lambda r: (int(r["member_id"]), r))

        def attach(kv: tuple[int, dict[str, list[Any]]]) -> Iterable[dict[str, Any]]:
            _, grouped = kv
            for rec in grouped["member"]:  # exactly one profile per member id
                yield {**rec, "history": history_text(grouped["events"])}

        return (
            {"member": keyed, "events": events}
            | "JoinHistory" >> beam.CoGroupByKey()
            | "Attach" >> beam.FlatMap(attach)
        )


class AttachInterest(beam.PTransform):
    """members -> members with ``interest``: their batch member-interest embedding (None for a
    member the interest run has not embedded yet; the tower sees has_interest = 0)."""

    def __init__(self, table: Path) -> None:
        super().__init__()
        self._table = table

    def expand(self, members: beam.PCollection) -> beam.PCollection:
        vectors = (
            members.pipeline
            | "ReadInterest"
            >> beam.io.ReadFromParquet(str(self._table), columns=["member_id", "embedding"])
            | "InterestKV" >> beam.Map(lambda r: (int(r["member_id"]), r["embedding"]))
        )
        keyed = members | "MemberKV" >> beam.Map(lambda r: (int(r["member_id"]), r))

        def attach(kv: tuple[int, dict[str, list[Any]]]) -> Iterable[dict[str, Any]]:
            _, grouped = kv
            vec = grouped["interest"][0] if grouped["interest"] else None
            for rec in grouped["member"]:
                yield {**rec, "interest": vec}

        return (
            {"member": keyed, "interest": vectors}
            | "JoinInterest" >> beam.CoGroupByKey()
            | "Attach" >> beam.FlatMap(attach)
        )
