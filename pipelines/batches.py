"""Batches of records: the element type of the embedding pipelines.

Per-element work in a Beam pipeline costs tens of microseconds of Python per element; the
model needs a few per row. So the embedding pipelines move *batches* of rows, not rows: a
``Batch`` is either an Arrow table (rows read from a file, up to ``batch_size`` of them) or a
list of records from any other source (``beam.Create``, a stream; it may hold things that are
not records at all, which validation refuses). Validation turns either into a list of checked
records (dicts), and the towers run one forward pass per batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa

Batch = pa.Table | list[Any]


def _frame(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Records -> DataFrame of object columns: the values as given (no int -> float coercion of
    a column holding a null, no list -> 2-d array), so the checks see them; a key a record
    lacks is null there."""
    columns = dict.fromkeys(k for r in records for k in r)
    n = len(records)
    data = {c: np.fromiter((r.get(c) for r in records), dtype=object, count=n) for c in columns}
    return pd.DataFrame(data, index=range(n))


def batch_frame(batch: Batch) -> tuple[pd.DataFrame, list[Any]]:
    """A batch -> (its records as a DataFrame, the elements that are not records).

    An Arrow table converts column-wise (an integer column holding a null stays integers and
    None, as the checks expect, rather than floats); a list goes through ``_frame``.
    """
    if isinstance(batch, pa.Table):
        return batch.to_pandas(integer_object_nulls=True), []
    records = [r for r in batch if isinstance(r, Mapping)]
    others = [r for r in batch if not isinstance(r, Mapping)]
    return _frame(records), others


def frame_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame rows -> dicts (10x faster than ``to_dict("records")``)."""
    columns = list(df.columns)
    return [dict(zip(columns, row, strict=True)) for row in df.to_numpy(dtype=object)]


def batch_records(batch: Batch) -> list[Any]:
    """The batch's elements one by one (dicts for the rows of a table)."""
    return batch.to_pylist() if isinstance(batch, pa.Table) else list(batch)


def _slices(table: pa.Table, size: int) -> Iterable[pa.Table]:
    """``table`` in pieces of ``size`` rows, each a compact copy: a zero-copy slice keeps the
    whole parent's buffers, and Beam's element-size sampling (and any shuffle) would encode
    all of them for every piece (13 MB per 256-row piece of a 20k-job file)."""
    for start in range(0, table.num_rows, size):
        yield table.take(np.arange(start, min(start + size, table.num_rows)))


class ReadBatches(beam.PTransform):
    """A Parquet file -> Arrow tables of at most ``batch_size`` rows (``columns``: all when
    None). The file's row groups split the read across workers."""

    def __init__(self, path: Path, batch_size: int, columns: Sequence[str] | None = None) -> None:
        super().__init__()
        if not path.exists():
            raise FileNotFoundError(f"missing input table {path}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._path, self._size = path, batch_size
        self._columns = None if columns is None else list(columns)

    def expand(self, p: beam.pvalue.PBegin) -> beam.PCollection:
        size = self._size
        return (
            p
            | "Read" >> beam.io.ReadFromParquetBatched(str(self._path), columns=self._columns)
            | "Slice" >> beam.FlatMap(lambda table: _slices(table, size))
        )


class Rebatch(beam.PTransform):
    """Single records -> lists of exactly ``batch_size`` (a bundle's end flushes a short one).

    Fixed sizes: Beam's adaptive batching starts at 1-4 elements, where per-batch costs (a
    frame, a forward pass) are paid per element.
    """

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self._size = batch_size

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        return records | "Batch" >> beam.BatchElements(
            min_batch_size=self._size, max_batch_size=self._size
        )


class Unbatch(beam.PTransform):
    """Batches -> their elements one by one (dicts for the rows of a table)."""

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return batches | "Unbatch" >> beam.FlatMap(batch_records)
