"""Beam batch inference: member-interest embeddings, and job + member two-tower embeddings.

    python -m pipelines.batch.embed --workspace var/demo --interest-version v1 [--history-before TS]
    python -m pipelines.batch.embed --workspace var/demo --version v1 [--runner FnApiRunner]

With ``--interest-version``: joins each member's profile with the titles of the jobs they
engaged with (before ``--history-before``) and writes the member-interest model's embeddings
to ``interest/embeddings/<iv>/members.parquet``, and its item tower's embeddings of every job
to ``jobs.parquet`` beside it (the ranker's member-interest cosine). With ``--version``: embeds
every job (item tower) and every member (request tower, no query; the member's interest
embedding of the co-trained interest version joined in) to
``embeddings/<version>/{jobs,members}.parquet``.
Rows are (id, embedding, model_version, event_timestamp). A record refused on the way (an id
repeated in the input, the record contract of ebr.data.records, a join, the featurizer, the
model, an embedding that is not a finite unit vector) is not embedded and goes to
``deadletter.jsonl`` beside the tables (pipelines.deadletter); the others go on, and the
summary counts the refusals per stage. Output folders are staged and swapped into place only
after the whole pipeline succeeded: readers see the old set or the new one (ebr.io). The
embedding transform (``EmbedBatches``: ``pipelines.towers.EmbedTowers`` with one request per
batch) is the one the streaming job runs; an element is a batch of rows
(``pipelines.batches``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import apache_beam as beam
import pandas as pd
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from ebr.config import Workspace
from ebr.io import atomic_directory
from ebr.versions import (
    InterestPaths,
    VersionPaths,
    check_version,
    interest_paths,
    model_config,
    read_meta,
    verified_interest,
    version_paths,
)
from pipelines.batch.joins import AttachHistory, AttachInterest
from pipelines.batches import ReadBatches, Rebatch, Unbatch
from pipelines.deadletter import (
    KEYS,
    DropRepeated,
    ValidateBatches,
    WriteDeadLetters,
    summarize,
)
from pipelines.towers import EmbedBatches, schema

ID_BATCH = 65_536  # rows per element of the id-only read that counts repeated ids
DEAD_LETTER_NAME = "deadletter"  # <output folder>/deadletter.jsonl: the run's refused elements

# Local default: the FnApiRunner runs in-process (the DirectRunner would first try to download
# the Prism binary, which an offline machine cannot). Flink/Dataflow are chosen with --runner.
DEFAULT_RUNNER = "FnApiRunner"


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workspace", type=Path, required=True, help="platform workspace root")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", help="two-tower model version to embed with, e.g. v1")
    which.add_argument("--interest-version", help="member-interest model version, e.g. v1")
    p.add_argument(
        "--history-before",
        type=lambda s: pd.Timestamp(s).to_pydatetime(),
        default=None,
        help="interest runs: only engagements before this ISO time form the history",
    )
    p.add_argument("--batch-size", type=int, default=256, help="rows per forward pass")
    p.add_argument("--runner", default=DEFAULT_RUNNER, help="Beam runner (default: local)")
    known, rest = p.parse_known_args(argv)
    if known.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {known.batch_size}")
    check_version(known.version or known.interest_version)
    return known, rest


def _sink(id_col: str, path: Path, dim: int) -> beam.PTransform:
    return beam.io.WriteToParquetBatched(
        str(path),
        schema=schema(id_col, dim),
        file_name_suffix=".parquet",
        num_shards=1,
        shard_name_template="",
    )


def embed_catalog(
    ws: Workspace,
    version: str,
    batch_size: int = 256,
    runner_options: Sequence[str] = (),
    test_pipeline: beam.Pipeline | None = None,
) -> dict[str, Any]:
    """Embed every job and member with model ``version`` (members joined with the batch
    interest embeddings of the interest version it was co-trained with) into
    ``embeddings/<version>/``; returns ``_embed``'s summary."""
    check_version(version)
    return _embed(ws, version, None, None, batch_size, runner_options, test_pipeline)


def embed_interest(
    ws: Workspace,
    interest_version: str,
    history_before: datetime | None = None,
    batch_size: int = 256,
    runner_options: Sequence[str] = (),
    test_pipeline: beam.Pipeline | None = None,
) -> dict[str, Any]:
    """Embed every member with member-interest model ``interest_version`` (engagement
    history before ``history_before``, all of it when None) into
    ``interest/embeddings/<interest_version>/``; returns ``_embed``'s summary."""
    check_version(interest_version)
    return _embed(
        ws, None, interest_version, history_before, batch_size, runner_options, test_pipeline
    )


def embed_interest_of(
    ws: Workspace, version: str, batch_size: int = 256, history_holdout_days: int = 2
) -> dict[str, Any] | None:
    """``embed_interest`` for the interest version model ``version`` was co-trained with,
    over the engagement history up to ``history_holdout_days`` before the log's end (all of
    it at 0); None for a model without a member-interest input."""
    from ebr.data.pairs import split_cutoff
    from ebr.versions import interest_version, read_meta, version_paths

    iv = interest_version(read_meta(version_paths(ws, version).model))
    if iv is None:
        return None
    before = None
    if history_holdout_days > 0:
        ts = pd.read_parquet(ws.data / "impressions.parquet", columns=["ts"])
        before = split_cutoff(ts, history_holdout_days).to_pydatetime()
    return embed_interest(ws, iv, before, batch_size)


def run(
    argv: list[str] | None = None, test_pipeline: beam.Pipeline | None = None
) -> dict[str, Any]:
    """The command line: parse ``argv`` and call ``embed_catalog`` or ``embed_interest``
    (options it does not know go to Beam)."""
    args, beam_args = parse_args(argv)
    options = [f"--runner={args.runner}", *beam_args]
    ws = Workspace(args.workspace)
    if args.interest_version is not None:
        return embed_interest(
            ws,
            args.interest_version,
            args.history_before,
            args.batch_size,
            options,
            test_pipeline,
        )
    return embed_catalog(ws, args.version, args.batch_size, options, test_pipeline)


def _embed(
    ws: Workspace,
    version: str | None,
    interest_version: str | None,
    history_before: datetime | None,
    batch_size: int,
    runner_options: Sequence[str],
    test_pipeline: beam.Pipeline | None,
) -> dict[str, Any]:
    """One embedding job; returns rows written per output, dead letters per stage (and kind,
    total, file: ``pipelines.deadletter.summarize``), seconds and the output folder."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    interest_run = interest_version is not None
    paths: VersionPaths | InterestPaths
    if interest_version is not None:
        paths = interest_paths(ws, interest_version)
        outputs: tuple[str, ...] = ("members", "jobs")
    else:
        assert version is not None, "a catalogue run names its model version"
        paths = version_paths(ws, version)
        outputs = ("jobs", "members")
    model_dir, out = paths.model, paths.embeddings
    options = list(runner_options)
    if not any(o.startswith("--runner") for o in options):
        options.insert(0, f"--runner={DEFAULT_RUNNER}")
    meta = read_meta(model_dir)
    cfg = model_config(meta)
    t0 = time.perf_counter()
    with atomic_directory(out, overwrite=True) as staging:
        pipeline = test_pipeline or beam.Pipeline(options=PipelineOptions(options))
        dead: list[beam.PCollection] = []

        def checked(name: str, kind: str) -> beam.PCollection:
            """Batches of the input table's records that are unique and hold the record
            contract (lists of dicts)."""
            label, path = name.capitalize(), ws.data / f"{name}.parquet"
            raw = pipeline | f"Read{label}" >> ReadBatches(path, batch_size)
            ids = pipeline | f"Read{label}Ids" >> ReadBatches(path, ID_BATCH, [KEYS[kind]])
            once = raw | f"Unique{label}" >> DropRepeated(kind, ids)
            valid = once.records | f"Validate{label}" >> ValidateBatches(kind)
            dead.extend([once.dead_letter, valid.dead_letter])
            return valid.records

        def embed(label: str, kind: str, batches: beam.PCollection, name: str) -> None:
            embedded = batches | f"Embed{label}" >> EmbedBatches(kind, model_dir, validate=False)
            embedded.records | f"Write{label}" >> _sink(KEYS[kind], staging / name, cfg.dim)
            dead.append(embedded.dead_letter)

        members = checked("members", "members")
        if interest_run:
            # The history join is keyed per member (a CoGroupByKey with the engagements).
            single = members | "Members" >> Unbatch()
            joined = single | "History" >> AttachHistory(ws, history_before)
            dead.append(joined.dead_letter)
            embed("Interest", "interest", joined.records | Rebatch(batch_size), "members")
            # The interest model's item tower: the jobs in its space (the ranker's cosine).
            embed("InterestJobs", "jobs", checked("jobs", "jobs"), "jobs")
        else:
            iv = verified_interest(ws, meta)
            if iv is not None:
                table = interest_paths(ws, iv).members
                joined = members | "Interest" >> AttachInterest(table, cfg.interest_dim)
                members = joined.records
                dead.append(joined.dead_letter)
            embed("Jobs", "jobs", checked("jobs", "jobs"), "jobs")
            embed("Members", "members", members, "members")
        tuple(dead) | "DeadLetters" >> WriteDeadLetters(staging / DEAD_LETTER_NAME)
        result = pipeline.run()
        result.wait_until_finish()
    # Row counts from the Parquet footers: reading the tables back would cost a second pass.
    counts = {k: pq.ParquetFile(out / f"{k}.parquet").metadata.num_rows for k in outputs}
    return {
        **counts,
        **summarize(out / f"{DEAD_LETTER_NAME}.jsonl"),
        "seconds": round(time.perf_counter() - t0, 2),
        "path": str(out),
    }


if __name__ == "__main__":
    print(run())
