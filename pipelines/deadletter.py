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
import pandas as pd

from ebr.data.records import check_jobs, check_members, echo

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


def _frame(batch: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Records -> DataFrame of object columns: the values as given (no int -> float coercion of
    a column holding a null, no list -> 2-d array), so the checks see them; a key a record
    lacks is null there."""
    columns = dict.fromkeys(k for r in batch for k in r)
    n = len(batch)
    data = {c: np.fromiter((r.get(c) for r in batch), dtype=object, count=n) for c in columns}
    return pd.DataFrame(data, index=range(n))


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame rows -> dicts (10x faster than ``to_dict("records")``)."""
    columns = list(df.columns)
    return [dict(zip(columns, row, strict=True)) for row in df.to_numpy(dtype=object)]


class _Validate(beam.DoFn):
    """A batch of records -> the ones that hold the record contract (normalised); one dead
    letter per refused record."""

    def __init__(self, kind: str, stage: str, required: tuple[str, ...]) -> None:
        self._kind, self._stage, self._required = kind, stage, required

    def process(self, batch: list[Any]) -> Iterable[Any]:
        records = []
        for rec in batch:
            if isinstance(rec, Mapping):
                records.append(rec)
            else:
                reason = f"not a record: {type(rec).__name__}"
                yield dead_letter(self._stage, self._kind, None, None, reason, rec)
        if not records:
            return
        check = check_jobs if self._kind == "jobs" else check_members
        good, rejected = check(_frame(records), required=self._required)
        for r in rejected:
            rec = records[r.row]
            yield dead_letter(self._stage, self._kind, r.id, r.field, r.reason, rec)
        yield from _records(good)


class ValidateRecords(beam.PTransform):
    """records -> ``Checked``: the contract of ``ebr.data.records`` checked in batches
    (vectorised; a one-row frame per element would cost ~0.3 ms each)."""

    def __init__(
        self,
        kind: str,
        stage: str = "validate",
        required: tuple[str, ...] | None = None,
        batch_size: int = 512,
    ) -> None:
        super().__init__()
        if kind not in ("jobs", "members"):
            raise ValueError(f"kind must be 'jobs' or 'members', got {kind!r}")
        self._kind, self._stage = kind, stage
        self._required = REQUIRED[kind] if required is None else required
        self._batch_size = batch_size

    def expand(self, records: beam.PCollection) -> Checked:
        out = (
            records
            # Fixed batch sizes: adaptive batching starts at 1-4 elements, where a frame per
            # batch costs as much as a frame per element. A bundle's end flushes a short batch.
            | "Batch"
            >> beam.BatchElements(min_batch_size=self._batch_size, max_batch_size=self._batch_size)
            | "Check"
            >> beam.ParDo(_Validate(self._kind, self._stage, self._required)).with_outputs(
                DEAD, main="good"
            )
        )
        return Checked(out.good, out[DEAD])


class _OnlyOnce(beam.DoFn):
    """record -> itself, or a dead letter when its id is among the ``repeated`` ones."""

    def __init__(self, kind: str) -> None:
        self._kind = kind

    def process(self, rec: Any, repeated: Mapping[int, int]) -> Iterable[Any]:
        id_ = readable_id(rec, KEYS[self._kind])
        copies = repeated.get(id_, 1) if id_ is not None else 1
        if copies == 1:
            yield rec
            return
        why = f"repeated in the input ({copies} records): none kept, which is right is unknown"
        yield dead_letter("unique", self._kind, id_, KEYS[self._kind], why, rec)


class DropRepeated(beam.PTransform):
    """records -> ``Checked``: records whose id occurs more than once are all refused.

    Batch runs only (a count over the whole input). Across Beam bundles "the last copy"
    (records.py's rule within one batch) has no meaning, and two embeddings of one id would
    make every reader downstream (slot build, Feast publish) refuse the whole table. Only ids
    are shuffled (not the records); records whose id is not an integer pass through untouched:
    validation refuses them.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self._kind = kind

    def expand(self, records: beam.PCollection) -> Checked:
        key = KEYS[self._kind]
        repeated = (
            records
            | "Ids"
            >> beam.FlatMap(lambda r: [] if (i := readable_id(r, key)) is None else [(i, 1)])
            | "Count" >> beam.CombinePerKey(sum)
            | "Repeated" >> beam.Filter(lambda kv: kv[1] > 1)
        )
        once = records | "OnlyOnce" >> beam.ParDo(
            _OnlyOnce(self._kind), repeated=beam.pvalue.AsDict(repeated)
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
