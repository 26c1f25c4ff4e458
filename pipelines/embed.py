"""Beam batch inference: member-interest embeddings, and job + member two-tower embeddings.

    python -m pipelines.embed --workspace var/demo --interest-version v1 [--history-before TS]
    python -m pipelines.embed --workspace var/demo --version v1 [--runner FnApiRunner]

With ``--interest-version``: joins each member's profile with the titles of the jobs they
engaged with (before ``--history-before``) and writes the member-interest model's embeddings
to ``interest/embeddings/<iv>/members.parquet``. With ``--version``: embeds every job (item
tower) and every member (request tower, no query; the member's interest embedding of the
co-trained interest version joined in) to ``embeddings/<version>/{jobs,members}.parquet``.
Rows are (id, embedding, model_version, event_timestamp). Output folders are staged and renamed
into place only after the whole pipeline succeeded: readers never see a half-written set.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerKeyedTensor
from apache_beam.options.pipeline_options import PipelineOptions

from ebr.config import ModelConfig, Workspace
from ebr.io import atomic_directory
from ebr.model.artifact import check_lineage, check_version, read_meta
from ebr.model.features import job_tensors, request_tensors
from ebr.model.interest import member_tensors
from ebr.model.towers import ItemTower, RequestTower
from pipelines.joins import AttachHistory, AttachInterest

KINDS = ("jobs", "members", "interest")  # item tower, request tower, member-interest tower

# Local default: the FnApiRunner runs in-process (the DirectRunner would first try to download
# the Prism binary, which an offline machine cannot). Flink/Dataflow are chosen with --runner.
DEFAULT_RUNNER = "FnApiRunner"


def _schema(id_col: str, dim: int) -> pa.Schema:
    return pa.schema(
        [
            (id_col, pa.int64()),
            ("embedding", pa.list_(pa.float32(), dim)),
            ("model_version", pa.string()),
            ("event_timestamp", pa.timestamp("us", tz="UTC")),
        ]
    )


class _Featurize(beam.DoFn):
    """record -> (id, {name: tensor}) with the same featurizer training used."""

    def __init__(self, kind: str, cfg: ModelConfig) -> None:
        self._kind, self._cfg = kind, cfg

    def process(self, rec: Mapping[str, Any]) -> Iterable[tuple[int, dict[str, torch.Tensor]]]:
        if self._kind == "jobs":
            feats = job_tensors(rec, self._cfg)
            key = int(rec["job_id"])
        elif self._kind == "interest":
            feats = member_tensors(rec, rec.get("history") or "", self._cfg)
            key = int(rec["member_id"])
        else:
            feats = request_tensors(None, rec, self._cfg)
            key = int(rec["member_id"])
        yield key, {k: torch.from_numpy(v) for k, v in feats.items()}


class EmbedRecords(beam.PTransform):
    """records -> output rows {id, embedding, model_version, event_timestamp}.

    Shared by batch and (later) streaming pipelines: only sources and sinks differ.
    """

    def __init__(self, kind: str, model_dir: Path, batch_size: int) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        meta = read_meta(model_dir)
        self._kind, self._cfg = kind, ModelConfig(**meta["model_config"])
        self._version = meta["version"]
        tower, file = (
            (ItemTower, "item_tower.pt") if kind == "jobs" else (RequestTower, "request_tower.pt")
        )
        self._handler = KeyedModelHandler(
            PytorchModelHandlerKeyedTensor(
                state_dict_path=str(model_dir / file),
                model_class=tower,
                model_params={"cfg": self._cfg},
                # Explicit batch sizes: Beam's defaults kept batches at 1-4 elements (30x slower).
                min_batch_size=batch_size,
                max_batch_size=batch_size,
                load_model_args={"weights_only": True},
            )
        )

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        id_col = "job_id" if self._kind == "jobs" else "member_id"  # interest: members too
        version = self._version

        def to_row(kv: tuple[int, PredictionResult]) -> dict[str, Any]:
            key, pred = kv
            return {
                id_col: key,
                "embedding": pred.inference.numpy().astype(np.float32).tolist(),
                "model_version": version,
                "event_timestamp": datetime.now(UTC),
            }

        return (
            records
            | "Featurize" >> beam.ParDo(_Featurize(self._kind, self._cfg))
            | "RunInference" >> RunInference(self._handler)
            | "ToRow" >> beam.Map(to_row)
        )


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
    p.add_argument("--batch-size", type=int, default=256, help="RunInference batch size")
    p.add_argument("--runner", default=DEFAULT_RUNNER, help="Beam runner (default: local)")
    known, rest = p.parse_known_args(argv)
    if known.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {known.batch_size}")
    check_version(known.version or known.interest_version)
    return known, rest


def _sink(id_col: str, path: Path, dim: int) -> beam.PTransform:
    return beam.io.WriteToParquet(
        str(path),
        schema=_schema(id_col, dim),
        file_name_suffix=".parquet",
        num_shards=1,
        shard_name_template="",
    )


def _source(path: Path) -> beam.PTransform:
    if not path.exists():
        raise FileNotFoundError(f"missing input table {path}")
    return beam.io.ReadFromParquet(str(path))


def run(
    argv: list[str] | None = None, test_pipeline: beam.Pipeline | None = None
) -> dict[str, Any]:
    """Run one embedding job; returns counts, seconds and the output folder."""
    args, beam_args = parse_args(argv)
    ws = Workspace(args.workspace)
    interest_run = args.interest_version is not None
    if interest_run:
        model_dir = ws.interest_models / args.interest_version
        out = ws.interest_embeddings / args.interest_version
        outputs = {"members": "member_id"}
    else:
        model_dir = ws.models / args.version
        out = ws.embeddings / args.version
        outputs = {"jobs": "job_id", "members": "member_id"}
    meta = read_meta(model_dir)
    cfg = ModelConfig(**meta["model_config"])
    t0 = time.perf_counter()
    with atomic_directory(out, overwrite=True) as staging:
        pipeline = test_pipeline or beam.Pipeline(
            options=PipelineOptions([f"--runner={args.runner}", *beam_args])
        )
        members = pipeline | "ReadMembers" >> _source(ws.data / "members.parquet")
        if interest_run:
            (
                members
                | "History" >> AttachHistory(ws, args.history_before)
                | "EmbedInterest" >> EmbedRecords("interest", model_dir, args.batch_size)
                | "WriteInterest" >> _sink("member_id", staging / "members", cfg.dim)
            )
        else:
            iv = check_lineage(meta, _interest_dir(ws, meta))
            if iv is not None:
                table = ws.interest_embeddings / iv / "members.parquet"
                members = members | "Interest" >> AttachInterest(table)
            (
                pipeline
                | "ReadJobs" >> _source(ws.data / "jobs.parquet")
                | "EmbedJobs" >> EmbedRecords("jobs", model_dir, args.batch_size)
                | "WriteJobs" >> _sink("job_id", staging / "jobs", cfg.dim)
            )
            (
                members
                | "EmbedMembers" >> EmbedRecords("members", model_dir, args.batch_size)
                | "WriteMembers" >> _sink("member_id", staging / "members", cfg.dim)
            )
        result = pipeline.run()
        result.wait_until_finish()
    counts = {
        k: len(pd.read_parquet(out / f"{k}.parquet", columns=[c])) for k, c in outputs.items()
    }
    return {**counts, "seconds": round(time.perf_counter() - t0, 2), "path": str(out)}


def _interest_dir(ws: Workspace, meta: dict[str, Any]) -> Path | None:
    recorded = meta.get("lineage", {}).get("member_interest")
    return None if recorded is None else ws.interest_models / recorded["version"]


if __name__ == "__main__":
    print(run())
