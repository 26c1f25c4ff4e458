"""Beam batch inference: member-interest embeddings, and job + member two-tower embeddings.

    python -m pipelines.embed --workspace var/demo --interest-version v1 [--history-before TS]
    python -m pipelines.embed --workspace var/demo --version v1 [--runner FnApiRunner]

With ``--interest-version``: joins each member's profile with the titles of the jobs they
engaged with (before ``--history-before``) and writes the member-interest model's embeddings
to ``interest/embeddings/<iv>/members.parquet``. With ``--version``: embeds every job (item
tower) and every member (request tower, no query; the member's interest embedding of the
co-trained interest version joined in) to ``embeddings/<version>/{jobs,members}.parquet``.
Rows are (id, embedding, model_version, event_timestamp). A record refused on the way (an id
repeated in the input, the record contract of ebr.data.records, a join, the featurizer, the
model, an embedding that is not a finite unit vector) is not embedded and goes to
``deadletter.jsonl`` beside the tables (pipelines.deadletter); the others go on, and the
summary counts the refusals per stage. Output folders are staged and swapped into place only
after the whole pipeline succeeded: readers see the old set or the new one (ebr.io).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Mapping, Sequence
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
from ebr.data.records import vector_problem
from ebr.io import atomic_directory
from ebr.model.artifact import check_lineage
from ebr.model.features import job_tensors, request_tensors
from ebr.model.interest import member_tensors
from ebr.model.specs import tower_specs
from ebr.model.towers import ItemTower, RequestTower
from ebr.versions import check_version, interest_version, model_config, read_meta
from pipelines.deadletter import (
    DEAD,
    KEYS,
    Checked,
    DropRepeated,
    ValidateRecords,
    WriteDeadLetters,
    dead_letter,
    exception_reason,
    readable_id,
    summarize,
)
from pipelines.joins import AttachHistory, AttachInterest

KINDS = ("jobs", "members", "interest")  # item tower, request tower, member-interest tower
DEAD_LETTER_NAME = "deadletter"  # <output folder>/deadletter.jsonl: the run's refused elements

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
    """record -> (id, {name: tensor}) with the same featurizer training used; a record the
    featurizer raises on -> a dead letter (exception type and message)."""

    def __init__(self, kind: str, cfg: ModelConfig) -> None:
        self._kind, self._cfg = kind, cfg

    def process(self, rec: Mapping[str, Any]) -> Iterable[Any]:
        key = readable_id(rec, KEYS[self._kind])
        try:
            if key is None:
                raise ValueError(f"{KEYS[self._kind]} is not an integer")
            if self._kind == "jobs":
                feats = job_tensors(rec, self._cfg)
            elif self._kind == "interest":
                feats = member_tensors(rec, rec.get("history") or "", self._cfg)
            else:
                feats = request_tensors(None, rec, self._cfg)
        except Exception as e:  # routed, not swallowed: the dead letter names it
            yield dead_letter("featurize", _table(self._kind), key, None, exception_reason(e), rec)
            return
        yield key, {k: torch.from_numpy(v) for k, v in feats.items()}


class _ToRow(beam.DoFn):
    """(id, prediction) -> output row; an embedding that is not a finite unit vector (the
    towers end in F.normalize) -> a dead letter instead of a row a slot build would refuse."""

    def __init__(self, kind: str, version: str) -> None:
        self._kind, self._version = kind, version

    def process(self, kv: tuple[int, PredictionResult]) -> Iterable[Any]:
        key, pred = kv
        vec = np.asarray(pred.inference, dtype=np.float32).ravel()  # CPU tensor [dim]
        why = vector_problem(vec)
        if why is None:
            yield {
                KEYS[self._kind]: key,
                "embedding": vec.tolist(),
                "model_version": self._version,
                "event_timestamp": datetime.now(UTC),
            }
            return
        why = f"embedding {why}"
        yield dead_letter("output", _table(self._kind), key, "embedding", why, {"id": key})


def _failed_batch(kind: str) -> Any:
    """(batch of (id, tensors), exception) from RunInference -> one dead letter per element."""

    def rows(failed: tuple[Sequence[tuple[int, Any]], BaseException]) -> Iterable[Any]:
        batch, exc = failed
        for key, _ in batch:
            row = dead_letter("inference", _table(kind), key, None, exception_reason(exc))
            yield row.value

    return rows


def _table(kind: str) -> str:
    return "jobs" if kind == "jobs" else "members"  # interest runs embed member records


class EmbedRecords(beam.PTransform):
    """records -> ``Checked(rows, dead_letter)``: rows {id, embedding, model_version,
    event_timestamp}; every record refused on the way (validation, featurizer, inference,
    output check) as a dead letter (pipelines.deadletter).

    Shared by batch and (later) streaming pipelines: only sources and sinks differ. With
    ``validate=False`` the caller has validated the records already (batch runs do, before
    their joins).
    """

    def __init__(self, kind: str, model_dir: Path, batch_size: int, validate: bool = True) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        meta = read_meta(model_dir)
        self._kind, self._cfg = kind, model_config(meta)
        self._version, self._validate = meta["version"], validate
        request_spec, item_spec = tower_specs(self._cfg)
        tower, file, spec = (
            (ItemTower, "item_tower.pt", item_spec)
            if kind == "jobs"
            else (RequestTower, "request_tower.pt", request_spec)
        )
        self._handler = KeyedModelHandler(
            PytorchModelHandlerKeyedTensor(
                state_dict_path=str(model_dir / file),
                model_class=tower,
                model_params={"cfg": self._cfg, "spec": spec},
                # Explicit batch sizes: Beam's defaults kept batches at 1-4 elements (30x slower).
                min_batch_size=batch_size,
                max_batch_size=batch_size,
                load_model_args={"weights_only": True},
            )
        )

    def expand(self, records: beam.PCollection) -> Checked:
        dead = []
        if self._validate:
            checked = records | "Validate" >> ValidateRecords(_table(self._kind))
            records, dead = checked.records, [checked.dead_letter]
        feats = records | "Featurize" >> beam.ParDo(_Featurize(self._kind, self._cfg)).with_outputs(
            DEAD, main="ok"
        )
        preds, failed = (
            feats.ok | "RunInference" >> RunInference(self._handler).with_exception_handling()
        )
        rows = preds | "ToRow" >> beam.ParDo(_ToRow(self._kind, self._version)).with_outputs(
            DEAD, main="rows"
        )
        failed_rows = failed.failed_inferences | "FailedBatches" >> beam.FlatMap(
            _failed_batch(self._kind)
        )
        dead += [feats[DEAD], failed_rows, rows[DEAD]]
        return Checked(rows.rows, tuple(dead) | "DeadLetters" >> beam.Flatten())


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
    if interest_version is not None:
        model_dir = ws.interest_models / interest_version
        out = ws.interest_embeddings / interest_version
        outputs = {"members": "member_id"}
    else:
        assert version is not None, "a catalogue run names its model version"
        model_dir = ws.models / version
        out = ws.embeddings / version
        outputs = {"jobs": "job_id", "members": "member_id"}
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
            """The input table's records that are unique and hold the record contract."""
            label = name.capitalize()
            raw = pipeline | f"Read{label}" >> _source(ws.data / f"{name}.parquet")
            once = raw | f"Unique{label}" >> DropRepeated(kind)
            valid = once.records | f"Validate{label}" >> ValidateRecords(kind)
            dead.extend([once.dead_letter, valid.dead_letter])
            return valid.records

        def embed(label: str, kind: str, records: beam.PCollection, name: str) -> None:
            embedded = records | f"Embed{label}" >> EmbedRecords(
                kind, model_dir, batch_size, validate=False
            )
            embedded.records | f"Write{label}" >> _sink(KEYS[kind], staging / name, cfg.dim)
            dead.append(embedded.dead_letter)

        members = checked("members", "members")
        if interest_run:
            joined = members | "History" >> AttachHistory(ws, history_before)
            dead.append(joined.dead_letter)
            embed("Interest", "interest", joined.records, "members")
        else:
            iv = check_lineage(meta, _interest_dir(ws, meta))
            if iv is not None:
                table = ws.interest_embeddings / iv / "members.parquet"
                joined = members | "Interest" >> AttachInterest(table, cfg.interest_dim)
                members = joined.records
                dead.append(joined.dead_letter)
            embed("Jobs", "jobs", checked("jobs", "jobs"), "jobs")
            embed("Members", "members", members, "members")
        tuple(dead) | "DeadLetters" >> WriteDeadLetters(staging / DEAD_LETTER_NAME)
        result = pipeline.run()
        result.wait_until_finish()
    counts = {
        k: len(pd.read_parquet(out / f"{k}.parquet", columns=[c])) for k, c in outputs.items()
    }
    return {
        **counts,
        **summarize(out / f"{DEAD_LETTER_NAME}.jsonl"),
        "seconds": round(time.perf_counter() - t0, 2),
        "path": str(out),
    }


def _interest_dir(ws: Workspace, meta: dict[str, Any]) -> Path | None:
    iv = interest_version(meta)
    return None if iv is None else ws.interest_models / iv


if __name__ == "__main__":
    print(run())
