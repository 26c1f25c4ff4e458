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
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from ebr.config import ModelConfig, Workspace
from ebr.data.records import UNIT_TOLERANCE, vector_problem
from ebr.io import atomic_directory
from ebr.model.artifact import load_item_tower, load_request_tower, verified_interest
from ebr.model.features import job_tensors, request_tensors, stack, warm_texts
from ebr.model.infer import run_tower
from ebr.model.interest import member_tensors
from ebr.versions import (
    InterestPaths,
    VersionPaths,
    check_version,
    interest_paths,
    model_config,
    read_meta,
    version_paths,
)
from pipelines.batches import ReadBatches, Rebatch, Unbatch
from pipelines.deadletter import (
    DEAD,
    KEYS,
    Checked,
    DropRepeated,
    ValidateBatches,
    WriteDeadLetters,
    dead_letter,
    exception_reason,
    readable_id,
    summarize,
)
from pipelines.joins import AttachHistory, AttachInterest

KINDS = ("jobs", "members", "interest")  # item tower, request tower, member-interest tower
ID_BATCH = 65_536  # rows per element of the id-only read that counts repeated ids
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


class _FeatureBatch(NamedTuple):
    """One model input: the ids of a batch's featurized records and their stacked tensors."""

    ids: list[int]
    features: dict[str, np.ndarray]


class _Featurize(beam.DoFn):
    """a batch of records -> one ``_FeatureBatch`` with the same featurizer training used; a
    record the featurizer raises on -> a dead letter (exception type and message), its
    batch-mates go on."""

    def __init__(self, kind: str, cfg: ModelConfig) -> None:
        self._kind, self._cfg = kind, cfg

    def _tensors(self, rec: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if self._kind == "jobs":
            return job_tensors(rec, self._cfg)
        if self._kind == "interest":
            return member_tensors(rec, rec.get("history") or "", self._cfg)
        return request_tensors(None, rec, self._cfg)

    def process(self, batch: list[Any]) -> Iterable[Any]:
        if self._kind == "jobs":  # MiniLM configs: the batch's titles in one encoder call
            warm_texts([r.get("title") for r in batch if isinstance(r, Mapping)], self._cfg)
        ids, rows = [], []
        for rec in batch:
            key = readable_id(rec, KEYS[self._kind])
            try:
                if key is None:
                    raise ValueError(f"{KEYS[self._kind]} is not an integer")
                feats = self._tensors(rec)
            except Exception as e:  # routed, not swallowed: the dead letter names it
                table = _table(self._kind)
                yield dead_letter("featurize", table, key, None, exception_reason(e), rec)
                continue
            ids.append(key)
            rows.append(feats)
        if rows:
            yield _FeatureBatch(ids, stack(rows))


class _TowerHandler(ModelHandler):  # type: ignore[misc]  # Beam's classes are untyped
    """RunInference's model handler for one tower: an example is a whole ``_FeatureBatch``
    (one forward pass each), loaded from the model folder with its checksums verified."""

    def __init__(self, kind: str, model_dir: Path) -> None:
        super().__init__()
        self._kind, self._dir = kind, model_dir

    def load_model(self) -> torch.nn.Module:
        load = load_item_tower if self._kind == "jobs" else load_request_tower
        return load(self._dir)[0]

    def run_inference(
        self, batch: Sequence[_FeatureBatch], model: torch.nn.Module, inference_args: Any = None
    ) -> Iterable[PredictionResult]:
        return [PredictionResult(ex, run_tower(model, ex.features)) for ex in batch]

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": 1}  # an example is a batch already

    def get_metrics_namespace(self) -> str:
        return "ebr_embed"


class _ToTable(beam.DoFn):
    """prediction of a batch -> one Arrow table of output rows; an embedding that is not a
    finite unit vector (the towers end in F.normalize) -> a dead letter instead of a row a
    slot build would refuse."""

    def __init__(self, kind: str, version: str, dim: int) -> None:
        self._kind, self._version, self._dim = kind, version, dim

    def process(self, pred: PredictionResult) -> Iterable[Any]:
        ids = np.asarray(pred.example.ids, dtype=np.int64)
        vecs = np.asarray(pred.inference, dtype=np.float32).reshape(len(ids), -1)
        with np.errstate(invalid="ignore", over="ignore"):
            norms = np.linalg.norm(vecs, axis=1)
        ok = np.isfinite(vecs).all(axis=1) & (np.abs(norms - 1.0) <= UNIT_TOLERANCE)
        for i in np.flatnonzero(~ok):
            why = f"embedding {vector_problem(vecs[i])}"
            key = int(ids[i])
            yield dead_letter("output", _table(self._kind), key, "embedding", why, {"id": key})
        if ok.any():
            yield rows_table(KEYS[self._kind], ids[ok], vecs[ok], self._version)


def rows_table(id_col: str, ids: np.ndarray, vecs: np.ndarray, version: str) -> pa.Table:
    """Output rows (id, embedding, model_version, event_timestamp: now) as one Arrow table."""
    n, dim = vecs.shape
    now = datetime.now(UTC)
    columns = [
        pa.array(ids, pa.int64()),
        pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel(), pa.float32()), dim),
        pa.array([version] * n, pa.string()),
        pa.array([now] * n, pa.timestamp("us", tz="UTC")),
    ]
    return pa.Table.from_arrays(columns, schema=_schema(id_col, dim))


def _failed_batch(kind: str) -> Any:
    """(batch of ``_FeatureBatch``, exception) from RunInference -> one dead letter per row."""

    def rows(failed: tuple[Sequence[_FeatureBatch], BaseException]) -> Iterable[Any]:
        batch, exc = failed
        for example in batch:
            for key in example.ids:
                row = dead_letter("inference", _table(kind), key, None, exception_reason(exc))
                yield row.value

    return rows


def _table(kind: str) -> str:
    return "jobs" if kind == "jobs" else "members"  # interest runs embed member records


class EmbedBatches(beam.PTransform):
    """batches of records (``pipelines.batches``) -> ``Checked(tables, dead_letter)``: one
    Arrow table of rows {id, embedding, model_version, event_timestamp} per batch; every record
    refused on the way (validation, featurizer, inference, output check) as a dead letter
    (pipelines.deadletter). One forward pass per batch: the per-row Python cost is the
    featurizer's, as in the plain torch loop.

    Shared by batch and streaming pipelines: only sources and sinks differ. With
    ``validate=False`` the caller has validated the records already (batch runs do, before
    their joins) and the elements are lists of records.
    """

    def __init__(self, kind: str, model_dir: Path, validate: bool = True) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        meta = read_meta(model_dir)
        self._kind, self._cfg = kind, model_config(meta)
        self._version, self._validate = meta["version"], validate
        self._handler = _TowerHandler(kind, model_dir)

    def expand(self, batches: beam.PCollection) -> Checked:
        dead = []
        if self._validate:
            checked = batches | "Validate" >> ValidateBatches(_table(self._kind))
            batches, dead = checked.records, [checked.dead_letter]
        feats = batches | "Featurize" >> beam.ParDo(_Featurize(self._kind, self._cfg)).with_outputs(
            DEAD, main="ok"
        )
        preds, failed = (
            feats.ok | "RunInference" >> RunInference(self._handler).with_exception_handling()
        )
        tables = preds | "ToTable" >> beam.ParDo(
            _ToTable(self._kind, self._version, self._cfg.dim)
        ).with_outputs(DEAD, main="tables")
        failed_rows = failed.failed_inferences | "FailedBatches" >> beam.FlatMap(
            _failed_batch(self._kind)
        )
        dead += [feats[DEAD], failed_rows, tables[DEAD]]
        return Checked(tables.tables, tuple(dead) | "DeadLetters" >> beam.Flatten())


class EmbedRecords(beam.PTransform):
    """single records -> ``Checked(rows, dead_letter)``: ``EmbedBatches`` over batches of
    ``batch_size`` of them, the rows one by one again (dicts)."""

    def __init__(self, kind: str, model_dir: Path, batch_size: int, validate: bool = True) -> None:
        super().__init__()
        self._embed = EmbedBatches(kind, model_dir, validate)
        self._batch_size = batch_size

    def expand(self, records: beam.PCollection) -> Checked:
        embedded = records | "Batch" >> Rebatch(self._batch_size) | "Embed" >> self._embed
        return Checked(embedded.records | "Rows" >> Unbatch(), embedded.dead_letter)


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
    return beam.io.WriteToParquetBatched(
        str(path),
        schema=_schema(id_col, dim),
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
        outputs = {"members": "member_id"}
    else:
        assert version is not None, "a catalogue run names its model version"
        paths = version_paths(ws, version)
        outputs = {"jobs": "job_id", "members": "member_id"}
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
        else:
            iv = verified_interest(ws.interest_models, meta)
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
    counts = {
        k: len(pd.read_parquet(out / f"{k}.parquet", columns=[c])) for k, c in outputs.items()
    }
    return {
        **counts,
        **summarize(out / f"{DEAD_LETTER_NAME}.jsonl"),
        "seconds": round(time.perf_counter() - t0, 2),
        "path": str(out),
    }


if __name__ == "__main__":
    print(run())
