"""The member joins (pipelines/batch/joins.py) on a real Beam pipeline: malformed joined values are
dead letters, never a failed run or a bad feature."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from ebr.config import Workspace
from ebr.model.interest import history_text
from pipelines.batch.joins import WITHOUT_INTEREST, AttachHistory, AttachInterest
from pipelines.batches import Unbatch

DIM = 4


def _test_pipeline() -> TestPipeline:
    return TestPipeline(options=PipelineOptions(["--runner=FnApiRunner"]))


def _refusal(d: dict) -> tuple:
    return d["stage"], d["kind"], d["id"], d["field"]


def test_malformed_interest_rows_are_dead_letters_and_members_go_on_without(
    tmp_path: Path,
) -> None:
    unit = [0.5, 0.5, 0.5, 0.5]
    rows = [
        (1, unit),
        (2, [1.0, 0.0]),  # wrong width
        (3, [float("nan"), 0.0, 0.0, 1.0]),  # non-finite
        (4, None),  # null
        (5, unit),  # repeated member_id
        (5, [0.0, 1.0, 0.0, 0.0]),
        (6, [0.0, 0.0, 0.0, 0.0]),  # not a unit vector
        (None, unit),  # unreadable member_id
    ]
    table = tmp_path / "members.parquet"
    schema = pa.schema([("member_id", pa.int64()), ("embedding", pa.list_(pa.float32()))])
    pq.write_table(
        pa.Table.from_pylist([{"member_id": m, "embedding": e} for m, e in rows], schema=schema),
        table,
    )
    members = [{"member_id": i, "headline": f"m{i}"} for i in range(1, 8)]  # 7: no interest row
    with _test_pipeline() as p:
        out = p | beam.Create([members]) | AttachInterest(table, DIM)  # one batch of members
        got = (
            out.records
            | Unbatch()
            | beam.Map(
                lambda r: (r["member_id"], None if r["interest"] is None else list(r["interest"]))
            )
        )
        assert_that(got, equal_to([(1, unit)] + [(i, None) for i in range(2, 8)]), label="rows")
        assert_that(
            out.dead_letter | "Refusals" >> beam.Map(_refusal),
            equal_to(
                [
                    ("join_interest", "interest", 2, "embedding"),
                    ("join_interest", "interest", 3, "embedding"),
                    ("join_interest", "interest", 4, "embedding"),
                    ("join_interest", "interest", 5, "member_id"),
                    ("join_interest", "interest", 6, "embedding"),
                    ("join_interest", "interest", None, "member_id"),
                ]
            ),
            label="dead letters",
        )
        # Each reason says what happened to the member.
        assert_that(
            out.dead_letter
            | "Reasons" >> beam.Map(lambda d: d["reason"].endswith(WITHOUT_INTEREST)),
            equal_to([True] * 6),
            label="reasons",
        )


def test_history_leaves_out_unusable_jobs_and_impressions(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ws.data.mkdir(parents=True)
    jobs = pa.schema([("job_id", pa.int64()), ("title", pa.string())])
    pq.write_table(
        pa.Table.from_pylist(
            [
                {"job_id": 1, "title": "Data engineer"},
                {"job_id": 2, "title": ""},  # breaks the record contract
                {"job_id": 3, "title": "Nurse"},
                {"job_id": None, "title": "Lost"},
            ],
            schema=jobs,
        ),
        ws.data / "jobs.parquet",
    )
    t = [datetime(2026, 10, d, tzinfo=UTC) for d in range(1, 8)]
    impressions = pa.schema(
        [
            ("member_id", pa.int64()),
            ("job_id", pa.int64()),
            ("outcome", pa.string()),
            ("ts", pa.timestamp("ns", tz="UTC")),
        ]
    )
    rows = [
        (1, 1, "click", t[0]),  # in member 1's history
        (1, 3, "apply", t[1]),  # in member 1's history
        (1, 3, "none", t[2]),  # not an engagement
        (2, 3, "apply", t[6]),  # after the cut
        (1, 2, "apply", t[1]),  # a job that was refused: dead letter
        (2, 99, "click", t[1]),  # a job that does not exist: dead letter
        (None, 1, "click", t[1]),  # dead letter
        (2, 1, None, t[1]),  # dead letter
        (2, 1, "click", None),  # dead letter
    ]
    pq.write_table(
        pa.Table.from_pylist(
            [dict(zip(("member_id", "job_id", "outcome", "ts"), r, strict=True)) for r in rows],
            schema=impressions,
        ),
        ws.data / "impressions.parquet",
    )
    before = datetime(2026, 10, 5)  # naive: read as UTC
    with _test_pipeline() as p:
        out = p | beam.Create([{"member_id": 1}, {"member_id": 2}]) | AttachHistory(ws, before)
        got = out.records | beam.Map(lambda r: (r["member_id"], r["history"]))
        expected_1 = history_text([(t[0], "Data engineer"), (t[1], "Nurse")])
        assert_that(got, equal_to([(1, expected_1), (2, "")]), label="histories")
        assert_that(
            out.dead_letter | beam.Map(lambda d: (d["stage"], d["kind"], d["field"])),
            equal_to(
                [
                    ("join_history", "jobs", "title"),
                    ("join_history", "jobs", "job_id"),
                    ("join_history", "impressions", "job_id"),
                    ("join_history", "impressions", "job_id"),
                    ("join_history", "impressions", "member_id"),
                    ("join_history", "impressions", "outcome"),
                    ("join_history", "impressions", "ts"),
                ]
            ),
            label="dead letters",
        )
