"""The embedding steps of batch and streaming pipelines: batches of records in, one Arrow table
of embedding rows per batch out. Both run the same three functions (``featurize``, one forward
pass, ``checked_rows``): batch as Beam stages (``EmbedBatches``), streaming in-line per poll
(``Tower.embed``); they are not yet one shared Beam transform.

An element is a batch of rows (``pipelines.batches``): the record contract is checked once per
batch, each record is featurized with the featurizer training used (a record it raises on is a
dead letter, its batch-mates go on), the tower runs one forward pass per batch (RunInference
with a handler whose example is a whole batch), and each output row must be a finite unit
vector. Rows are (id, embedding, model_version, event_timestamp).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import torch
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from ebr.config import ModelConfig
from ebr.data.records import UNIT_TOLERANCE, vector_problem
from ebr.model.artifact import load_item_tower, load_request_tower
from ebr.model.features import job_tensors, request_tensors, stack, warm_texts
from ebr.model.infer import run_tower
from ebr.model.interest import member_tensors
from ebr.versions import model_config, read_meta
from pipelines.batches import Rebatch, Unbatch
from pipelines.deadletter import (
    DEAD,
    KEYS,
    Checked,
    ValidateBatches,
    dead_letter,
    exception_reason,
    readable_id,
)

KINDS = ("jobs", "members", "interest")  # item tower, request tower, member-interest tower


def schema(id_col: str, dim: int) -> pa.Schema:
    """The embedding rows' Arrow schema (fixed-width float32 vectors)."""
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


def _tensors(kind: str, rec: Mapping[str, Any], cfg: ModelConfig) -> dict[str, np.ndarray]:
    if kind == "jobs":
        return job_tensors(rec, cfg)
    if kind == "interest":
        return member_tensors(rec, rec.get("history") or "", cfg)
    return request_tensors(None, rec, cfg)


def featurize(
    kind: str, cfg: ModelConfig, batch: list[Any]
) -> tuple[_FeatureBatch | None, list[Any]]:
    """a batch of records -> (one ``_FeatureBatch`` with the featurizer training used, or None
    when no record is left; a dead letter for each record the featurizer raises on, with the
    exception type and message: its batch-mates go on)."""
    if kind == "jobs":  # MiniLM configs: the batch's titles in one encoder call
        warm_texts([r.get("title") for r in batch if isinstance(r, Mapping)], cfg)
    ids, rows, dead = [], [], []
    for rec in batch:
        key = readable_id(rec, KEYS[kind])
        try:
            if key is None:
                raise ValueError(f"{KEYS[kind]} is not an integer")
            feats = _tensors(kind, rec, cfg)
        except Exception as e:  # routed, not swallowed: the dead letter names it
            dead.append(dead_letter("featurize", _table(kind), key, None, exception_reason(e), rec))
            continue
        ids.append(key)
        rows.append(feats)
    return (_FeatureBatch(ids, stack(rows)) if rows else None), dead


class _Featurize(beam.DoFn):
    """``featurize`` as a Beam stage."""

    def __init__(self, kind: str, cfg: ModelConfig) -> None:
        self._kind, self._cfg = kind, cfg

    def process(self, batch: list[Any]) -> Iterable[Any]:
        features, dead = featurize(self._kind, self._cfg, batch)
        yield from dead
        if features is not None:
            yield features


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


def checked_rows(
    kind: str, version: str, ids: Sequence[int], vectors: np.ndarray
) -> tuple[pa.Table | None, list[Any]]:
    """A forward pass's output -> (one Arrow table of output rows, or None when none is left;
    a dead letter for each embedding that is not a finite unit vector: the towers end in
    F.normalize, so such a row would only be refused later, by a slot build)."""
    ids_ = np.asarray(ids, dtype=np.int64)
    vecs = np.asarray(vectors, dtype=np.float32).reshape(len(ids_), -1)
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.linalg.norm(vecs, axis=1)
    ok = np.isfinite(vecs).all(axis=1) & (np.abs(norms - 1.0) <= UNIT_TOLERANCE)
    dead = []
    for i in np.flatnonzero(~ok):
        why, key = f"embedding {vector_problem(vecs[i])}", int(ids_[i])
        dead.append(dead_letter("output", _table(kind), key, "embedding", why, {"id": key}))
    table = rows_table(KEYS[kind], ids_[ok], vecs[ok], version) if ok.any() else None
    return table, dead


class _ToTable(beam.DoFn):
    """``checked_rows`` of each prediction as a Beam stage."""

    def __init__(self, kind: str, version: str) -> None:
        self._kind, self._version = kind, version

    def process(self, pred: PredictionResult) -> Iterable[Any]:
        table, dead = checked_rows(self._kind, self._version, pred.example.ids, pred.inference)
        yield from dead
        if table is not None:
            yield table


class Tower:
    """One loaded tower and the same three steps ``EmbedBatches`` runs as Beam stages
    (``featurize``, one forward pass, ``checked_rows``), called in-line: for a job that must
    keep one element (a poll of a stream) whole from source to acknowledgement."""

    def __init__(self, kind: str, model_dir: Path) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        meta = read_meta(model_dir)
        self.kind, self.cfg, self.version = kind, model_config(meta), str(meta["version"])
        self.model = _TowerHandler(kind, model_dir).load_model()

    def embed(self, records: list[Any]) -> tuple[pa.Table | None, list[dict[str, Any]]]:
        """records -> (rows {id, embedding, model_version, event_timestamp} or None, dead
        letters: the rows of ``pipelines.deadletter``)."""
        features, dead = featurize(self.kind, self.cfg, records)
        table = None
        if features is not None:
            try:
                vectors = run_tower(self.model, features.features)
            except Exception as e:  # the whole batch failed, as RunInference's failed output
                reason = exception_reason(e)
                dead += [dead_letter("inference", _table(self.kind), k, None, reason)
                         for k in features.ids]  # fmt: skip
            else:
                table, more = checked_rows(self.kind, self.version, features.ids, vectors)
                dead += more
        return table, [d.value for d in dead]


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
    return pa.Table.from_arrays(columns, schema=schema(id_col, dim))


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
        tables = preds | "ToTable" >> beam.ParDo(_ToTable(self._kind, self._version)).with_outputs(
            DEAD, main="tables"
        )
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
