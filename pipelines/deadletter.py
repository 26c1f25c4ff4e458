"""Dead letters: elements a pipeline stage refused, with the reason, written beside the results.

One bad record never fails a run, and never slips through either: every stage that can fail on
one element sends that element to the ``DEAD`` tagged output and lets the others go on. A run
flattens its dead letters into ``deadletter.jsonl`` in its output folder, one JSON object per
refused element::

    {"stage": "validate", "kind": "jobs", "id": 17, "field": "lat",
     "reason": "must be within ±90, got 200.0", "record": {"job_id": "17", "lat": "200.0", ...}}

``stage`` is where it was refused (``STAGES``), ``kind`` the table it came from (jobs, members,
impressions, interest), ``id`` its id when readable (else null), ``field`` the field at fault
when known (else null), ``record`` a bounded echo (``ebr.data.records.echo``: at most
60 characters per value, lists and arrays by type only, never a whole description).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa

from ebr.data.records import MAX_ID, check_jobs, check_members, echo
from pipelines.batches import Batch, Rebatch, Unbatch, batch_frame, batch_records, frame_records

DEAD = "dead_letter"  # the tagged output every stage's refusals go to
STAGES = (
    "unique",  # an id repeated across the input (batch runs): every copy refused
    "validate",  # the record contract (ebr.data.records)
    "join_history",  # an impression or job title the history join could not use
    "join_interest",  # a malformed interest vector (the member goes on without it)
    "featurize",  # the featurizer raised
    "inference",  # the model raised on the element's batch
    "output",  # the embedding is not a finite unit vector
)
REASON_CHARS = 200  # an exception message is cut here: bounded rows, whatever was raised
ECHO_FIELDS = 24  # a record echo lists at most this many fields
KEYS = {"jobs": "job_id", "members": "member_id", "interest": "member_id"}
# Columns a record must carry for the featurizers to read it (their values follow records.py).
REQUIRED = {"jobs": ("job_id", "title", "remote"), "members": ("member_id",)}


class Checked(NamedTuple):
    """A composite's outputs: the records that went on, and the refused ones."""

    records: beam.PCollection
    dead_letter: beam.PCollection


def readable_id(record: Any, key: str) -> int | None:
    """``record[key]`` when it is an integer (not a bool), else None."""
    value = record.get(key) if isinstance(record, Mapping) else None
    if isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
        return int(value)
    return None


def dead_letter(
    stage: str, kind: str, id_: int | None, field: str | None, reason: str, record: Any = None
) -> beam.pvalue.TaggedOutput:
    """The ``DEAD`` output of one refused element (the module docstring's row)."""
    if isinstance(record, Mapping):
        shown = {str(k): echo(v) for k, v in list(record.items())[:ECHO_FIELDS]}
    else:
        shown = {"value": echo(record)} if record is not None else {}
    row = {
        "stage": stage,
        "kind": kind,
        "id": id_,
        "field": field,
        "reason": reason[:REASON_CHARS],
        "record": shown,
    }
    return beam.pvalue.TaggedOutput(DEAD, row)


def exception_reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:REASON_CHARS]


class _Validate(beam.DoFn):
    """A batch -> one list of the records that hold the record contract (normalised); one
    dead letter per refused element."""

    def __init__(self, kind: str, stage: str, required: tuple[str, ...]) -> None:
        self._kind, self._stage, self._required = kind, stage, required

    def process(self, batch: Batch) -> Iterable[Any]:
        df, others = batch_frame(batch)
        for rec in others:
            reason = f"not a record: {type(rec).__name__}"
            yield dead_letter(self._stage, self._kind, None, None, reason, rec)
        if df.empty:
            return
        check = check_jobs if self._kind == "jobs" else check_members
        good, rejected = check(df, required=self._required)
        if rejected:
            rows = batch_records(batch) if isinstance(batch, pa.Table) else None
            records = rows if rows is not None else [r for r in batch if isinstance(r, Mapping)]
            for r in rejected:
                yield dead_letter(self._stage, self._kind, r.id, r.field, r.reason, records[r.row])
        if len(good):
            yield frame_records(good)


def _check_kind(kind: str) -> None:
    if kind not in ("jobs", "members"):
        raise ValueError(f"kind must be 'jobs' or 'members', got {kind!r}")


class ValidateBatches(beam.PTransform):
    """Batches -> ``Checked``: lists of the records that hold the contract of
    ``ebr.data.records`` (checked vectorised, one frame per batch), and the refused ones."""

    def __init__(
        self, kind: str, stage: str = "validate", required: tuple[str, ...] | None = None
    ) -> None:
        super().__init__()
        _check_kind(kind)
        self._kind, self._stage = kind, stage
        self._required = REQUIRED[kind] if required is None else required

    def expand(self, batches: beam.PCollection) -> Checked:
        out = batches | "Check" >> beam.ParDo(
            _Validate(self._kind, self._stage, self._required)
        ).with_outputs(DEAD, main="good")
        return Checked(out.good, out[DEAD])


class ValidateRecords(beam.PTransform):
    """Single records -> ``Checked``: ``ValidateBatches`` over fixed-size batches of them (a
    one-row frame per element would cost ~0.3 ms each), the good ones one by one again."""

    def __init__(
        self,
        kind: str,
        stage: str = "validate",
        required: tuple[str, ...] | None = None,
        batch_size: int = 512,
    ) -> None:
        super().__init__()
        _check_kind(kind)
        self._validate = ValidateBatches(kind, stage, required)
        self._batch_size = batch_size

    def expand(self, records: beam.PCollection) -> Checked:
        checked = records | "Batch" >> Rebatch(self._batch_size) | "Validate" >> self._validate
        return Checked(checked.records | "Unbatch" >> Unbatch(), checked.dead_letter)


def batch_ids(batch: Batch, key: str) -> list[int | None]:
    """The ``key`` of each element of a batch: its integer id, or None (unreadable)."""
    if isinstance(batch, pa.Table):
        if key not in batch.column_names:
            return [None] * batch.num_rows
        return [readable_id({key: v}, key) for v in batch.column(key).to_pylist()]
    return [readable_id(r, key) for r in batch]


class _CountIds(beam.CombineFn):  # type: ignore[misc]  # Beam's classes are untyped
    """Batches' id lists -> {id: copies} of the ids that occur more than once.

    The accumulator holds every id as int64 (8 bytes each: 80 MB at 10M ids) on one worker;
    an id beyond int64 is left out (validation refuses it anyway).
    """

    def create_accumulator(self) -> list[np.ndarray]:
        return []

    def add_input(self, acc: list[np.ndarray], ids: list[int | None]) -> list[np.ndarray]:
        acc.append(np.fromiter((i for i in ids if i is not None and abs(i) <= MAX_ID), np.int64))
        return acc

    def merge_accumulators(self, accs: Iterable[list[np.ndarray]]) -> list[np.ndarray]:
        return [np.concatenate([a for acc in accs for a in acc] or [np.zeros(0, np.int64)])]

    def extract_output(self, acc: list[np.ndarray]) -> dict[int, int]:
        ids, counts = np.unique(self.merge_accumulators([acc])[0], return_counts=True)
        repeated = counts > 1
        return dict(zip(ids[repeated].tolist(), counts[repeated].tolist(), strict=True))


class _OnlyOnce(beam.DoFn):
    """batch -> itself without the elements whose id is among the ``repeated`` ones (each a
    dead letter)."""

    def __init__(self, kind: str) -> None:
        self._kind = kind

    def process(self, batch: Batch, repeated: Mapping[int, int]) -> Iterable[Any]:
        key = KEYS[self._kind]
        ids = batch_ids(batch, key) if repeated else []
        hits = {i: repeated[id_] for i, id_ in enumerate(ids) if id_ in repeated}
        if not hits:
            yield batch
            return
        records = batch_records(batch)
        for i, copies in hits.items():
            why = f"repeated in the input ({copies} records): none kept, which is right is unknown"
            yield dead_letter("unique", self._kind, ids[i], key, why, records[i])
        kept = [r for i, r in enumerate(records) if i not in hits]
        if kept:
            yield kept


class DropRepeated(beam.PTransform):
    """batches -> ``Checked``: batches without the records whose id occurs more than once in
    the whole input (each copy refused).

    Batch runs only (a count over the whole input). Across Beam bundles "the last copy"
    (records.py's rule within one batch) has no meaning, and two embeddings of one id would
    make every reader downstream (slot build, Feast publish) refuse the whole table. Only ids
    travel to the count (not the records); records whose id is not an integer pass through
    untouched: validation refuses them.

    ``ids``: batches of the same input holding only the id column (a second, columnar read
    of a file). Counting those instead of ``batches`` keeps the records streaming through one
    fused stage: otherwise the runner must hold every record until the count is done.
    """

    def __init__(self, kind: str, ids: beam.PCollection | None = None) -> None:
        super().__init__()
        self._kind, self._ids = kind, ids

    def expand(self, batches: beam.PCollection) -> Checked:
        key = KEYS[self._kind]
        repeated = (
            (batches if self._ids is None else self._ids)
            | "Ids" >> beam.Map(batch_ids, key)
            | "Count" >> beam.CombineGlobally(_CountIds())
        )
        once = batches | "OnlyOnce" >> beam.ParDo(
            _OnlyOnce(self._kind), repeated=beam.pvalue.AsSingleton(repeated)
        ).with_outputs(DEAD, main="once")
        return Checked(once.once, once[DEAD])


class WriteDeadLetters(beam.PTransform):
    """dead-letter PCollections -> ``<prefix>.jsonl`` (one file, written even when empty)."""

    def __init__(self, prefix: Path) -> None:
        super().__init__()
        self._prefix = prefix

    def expand(self, dead: Sequence[beam.PCollection]) -> beam.PCollection:
        return (
            tuple(dead)
            | "All" >> beam.Flatten()
            | "Json"
            >> beam.Map(
                lambda row: json.dumps(row, sort_keys=True, allow_nan=False, ensure_ascii=False)
            )
            | "Write"
            >> beam.io.WriteToText(
                str(self._prefix), file_name_suffix=".jsonl", num_shards=1, shard_name_template=""
            )
        )


def summarize(path: Path) -> dict[str, Any]:
    """Counts of a run's dead letters: ``{"dead_letter": {stage: n}, "dead_letter_kinds":
    {kind: n}, "dead_letter_total": n, "dead_letter_path": str}``."""
    stages: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            stages[row["stage"]] += 1
            kinds[row["kind"]] += 1
    return {
        "dead_letter": dict(sorted(stages.items())),
        "dead_letter_kinds": dict(sorted(kinds.items())),
        "dead_letter_total": sum(stages.values()),
        "dead_letter_path": str(path),
    }
