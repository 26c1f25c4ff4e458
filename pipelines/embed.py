"""Beam batch inference: embed every job (item tower) and every member (request tower, no query).

    python -m pipelines.embed --workspace var/demo --version v1 [--runner FnApiRunner]

Writes ``embeddings/<version>/{jobs,members}.parquet`` (id, embedding, model_version,
event_timestamp). The output folder is staged and renamed into place only after the whole
pipeline succeeded, so readers never see a half-written embedding set.
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
from ebr.model.artifact import check_version, read_meta
from ebr.model.features import job_tensors, request_tensors
from ebr.model.towers import ItemTower, RequestTower

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
        if kind not in ("jobs", "members"):
            raise ValueError(f"kind must be 'jobs' or 'members', got {kind!r}")
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
        id_col = "job_id" if self._kind == "jobs" else "member_id"
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
    p.add_argument("--version", required=True, help="model version to embed with, e.g. v1")
    p.add_argument("--batch-size", type=int, default=256, help="RunInference batch size")
    p.add_argument("--runner", default=DEFAULT_RUNNER, help="Beam runner (default: local)")
    known, rest = p.parse_known_args(argv)
    if known.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {known.batch_size}")
    check_version(known.version)
    return known, rest


def run(
    argv: list[str] | None = None, test_pipeline: beam.Pipeline | None = None
) -> dict[str, Any]:
    """Embed jobs and members of a workspace; returns counts, seconds and the output folder."""
    args, beam_args = parse_args(argv)
    ws = Workspace(args.workspace)
    model_dir = ws.models / args.version
    dim = ModelConfig(**read_meta(model_dir)["model_config"]).dim
    t0 = time.perf_counter()
    with atomic_directory(ws.embeddings / args.version, overwrite=True) as staging:
        pipeline = test_pipeline or beam.Pipeline(
            options=PipelineOptions([f"--runner={args.runner}", *beam_args])
        )
        for kind, id_col in (("jobs", "job_id"), ("members", "member_id")):
            src = ws.data / f"{kind}.parquet"
            if not src.exists():
                raise FileNotFoundError(f"missing input table {src}")
            (
                pipeline
                | f"Read{kind}" >> beam.io.ReadFromParquet(str(src))
                | f"Embed{kind}" >> EmbedRecords(kind, model_dir, args.batch_size)
                | f"Write{kind}"
                >> beam.io.WriteToParquet(
                    str(staging / kind),
                    schema=_schema(id_col, dim),
                    file_name_suffix=".parquet",
                    num_shards=1,
                    shard_name_template="",
                )
            )
        result = pipeline.run()
        result.wait_until_finish()
    out = ws.embeddings / args.version
    counts = {
        k: len(pd.read_parquet(out / f"{k}.parquet", columns=[c]))
        for k, c in (("jobs", "job_id"), ("members", "member_id"))
    }
    return {**counts, "seconds": round(time.perf_counter() - t0, 2), "path": str(out)}


if __name__ == "__main__":
    print(run())
