"""The embedding step of batch and streaming pipelines, one Beam transform: ``EmbedTowers``.

An element is ``(carry, requests)``: each ``EmbedRequest`` names a tower (kind and model
folder) and a batch of records; the output is ``(carry, results)``, one ``(rows, dead
letters)`` per request, in order. ``carry`` travels untouched: the streaming job keeps one poll
whole from its source to its acknowledgement through it (the towers a poll needs change as
releases join and leave, so they are chosen per element), the batch pipelines carry nothing
(``EmbedBatches``: one request per batch, of one fixed tower).

Per request: each record is featurized with the featurizer training used (a record it raises
on is a dead letter, its batch-mates go on), the tower runs one forward pass per batch (a
failed pass dead-letters the batch's records with the exception) and each output row must be a
finite unit vector. Rows are (id, embedding, model_version, event_timestamp). Towers are
loaded once per process (``tower``), checksums verified, and reloaded when their model.json
changes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import torch

from ebr.config import ModelConfig
from ebr.data.records import UNIT_TOLERANCE, vector_problem
from ebr.model.artifact import load_item_tower, load_request_tower
from ebr.model.features import job_tensors, request_tensors, stack, warm_texts
from ebr.model.infer import run_tower
from ebr.model.interest import member_tensors
from ebr.progress import report
from ebr.versions import META_FILE, model_config, read_meta
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


class Tower:
    """One loaded tower and its three steps: ``featurize``, one forward pass, ``checked_rows``
    (``EmbedTowers`` runs them; ``tower`` keeps one per model per process)."""

    def __init__(self, kind: str, model_dir: Path) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        meta = read_meta(model_dir)
        self.kind, self.cfg, self.version = kind, model_config(meta), str(meta["version"])
        load = load_item_tower if kind == "jobs" else load_request_tower
        self.model: torch.nn.Module = load(model_dir)[0]

    def embed(self, records: list[Any]) -> tuple[pa.Table | None, list[dict[str, Any]]]:
        """records -> (rows {id, embedding, model_version, event_timestamp} or None, dead
        letters: the rows of ``pipelines.deadletter``)."""
        features, dead = featurize(self.kind, self.cfg, records)
        table = None
        if features is not None:
            try:
                vectors = run_tower(self.model, features.features)
            except Exception as e:  # the whole batch failed: each of its records says why
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


def _table(kind: str) -> str:
    return "jobs" if kind == "jobs" else "members"  # interest runs embed member records


_TOWERS: dict[tuple[str, str], tuple[int, Tower]] = {}
_TOWERS_LOCK = threading.Lock()


def tower(kind: str, model_dir: Path | str) -> Tower:
    """The ``kind`` tower of the model at ``model_dir``, loaded once per process (a streaming
    job runs many short pipelines; loading per run would cost seconds), again when its
    model.json changed since."""
    path = Path(model_dir)
    stamp = (path / META_FILE).stat().st_mtime_ns
    key = (kind, str(path.resolve()))
    with _TOWERS_LOCK:
        hit = _TOWERS.get(key)
        if hit is None or hit[0] != stamp:
            hit = _TOWERS[key] = (stamp, Tower(kind, path))
    return hit[1]


class EmbedRequest(NamedTuple):
    """Records for one tower: ``kind`` (``KINDS``) of the model at ``model_dir``."""

    kind: str
    model_dir: str
    records: list[Any]


Result = tuple[pa.Table | None, list[dict[str, Any]]]  # (rows or None, dead letter rows)


class Embedding(NamedTuple):
    """``EmbedTowers``' output element: the carry, each request's result (in order), and the
    exception when the element could not be embedded at all (then no results)."""

    carry: Any
    results: tuple[Result, ...]
    error: BaseException | None = None


def embed_requests(requests: Sequence[EmbedRequest]) -> tuple[Result, ...]:
    """Each request's (rows, dead letters), in order: what ``EmbedTowers`` does per element."""
    return tuple(tower(r.kind, r.model_dir).embed(list(r.records)) for r in requests)


class _EmbedTowers(beam.DoFn):
    def __init__(self, raise_failures: bool) -> None:
        self._raise = raise_failures

    def process(self, element: tuple[Any, Sequence[EmbedRequest]]) -> Iterable[Embedding]:
        carry, requests = element
        try:
            results = embed_requests(requests)
        except Exception as err:  # a tower that cannot load, a store: the caller decides
            if self._raise:
                raise
            yield Embedding(carry, (), err)
            return
        yield Embedding(carry, results)


class EmbedTowers(beam.PTransform):
    """``(carry, requests)`` -> ``Embedding(carry, results, error)``: every request embedded by
    its tower (see the module docstring); one output, so a chain of these stays a line (the
    local DirectRunner holds a Flatten's elements until the job ends). An element that cannot be
    embedded at all (a tower that fails to load) raises with ``raise_failures``, else comes
    out with its ``error``; records a tower refuses are dead letters in the results."""

    def __init__(self, raise_failures: bool = False) -> None:
        super().__init__()
        self._raise = raise_failures

    def expand(self, elements: beam.PCollection) -> beam.PCollection:
        return elements | "EmbedTowers" >> beam.ParDo(_EmbedTowers(self._raise))


def _split_result(element: Embedding) -> Iterable[Any]:
    ((table, dead),) = element.results
    for row in dead:
        yield beam.pvalue.TaggedOutput(DEAD, row)
    if table is not None:
        report("embed", advance=table.num_rows)
        yield table


class EmbedBatches(beam.PTransform):
    """batches of records (``pipelines.batches``) of one tower -> ``Checked(tables,
    dead_letter)``: one Arrow table of rows {id, embedding, model_version, event_timestamp}
    per batch; every record refused on the way (validation, featurizer, inference, output
    check) as a dead letter (pipelines.deadletter). ``EmbedTowers`` with one request per
    batch: the streaming job runs the same transform. With ``validate=False`` the caller has
    validated the records already (batch runs do, before their joins) and the elements are
    lists of records."""

    def __init__(self, kind: str, model_dir: Path, validate: bool = True) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        read_meta(model_dir)  # a missing model fails at construction, naming the folder
        self._kind, self._dir, self._validate = kind, str(model_dir), validate

    def expand(self, batches: beam.PCollection) -> Checked:
        dead = []
        if self._validate:
            checked = batches | "Validate" >> ValidateBatches(_table(self._kind))
            batches, dead = checked.records, [checked.dead_letter]
        kind, folder = self._kind, self._dir
        embedded = (
            batches
            | "Request" >> beam.Map(lambda b: (None, (EmbedRequest(kind, folder, b),)))
            | "Embed" >> EmbedTowers(raise_failures=True)
        )
        tables = embedded | "Rows" >> beam.FlatMap(_split_result).with_outputs(DEAD, main="tables")
        dead.append(tables[DEAD])
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
