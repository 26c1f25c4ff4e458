"""The catalogue's batch embedding as one chain of shards: a pipeline every Beam runner can run,
Beam's DaskRunner on a ``dask.distributed`` cluster included.

    python -m pipelines.batch.sharded --workspace var/demo --version v1 \\
        --runner apache_beam.runners.dask.dask_runner.DaskRunner \\
        --dask_client_address tcp://127.0.0.1:8786

Beam's DaskRunner (2.77) translates Create, ParDo, GroupByKey and Flatten only, computes the
graph of the last transform it visits alone (a pipeline's other sinks never run) and does not
keep a ParDo's tagged outputs apart (every element reaches every output): the main pipeline
(``pipelines.batch.embed``: splittable Parquet reads, dead letters as tagged outputs, three
sinks) would silently lose data there. This one is ``Create`` of row ranges (shards) into one
``ParDo``, which reads its shard and runs the main pipeline's steps with the main pipeline's
code, in its order: repeated ids dropped (``_OnlyOnce``), the record contract (``_Validate``),
members' interest embeddings attached (``_attach``), the towers (``Tower.embed``); it writes
its shard's rows and dead letters as files. What every shard needs whole is worked out once by
the driver before the run, with the same code: the ids repeated in each table (``_CountIds``)
and the interest table (``_InterestVectors``, ``_InterestTable``). After the run the driver
joins the shards' files into ``embeddings/<version>/{jobs,members}.parquet`` and
``deadletter.jsonl``, staged and swapped in whole (``ebr.io.atomic_directory``). Same rows and
dead letters as the main pipeline (``tests/pipelines/test_dask_runner.py``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from ebr.config import Workspace
from ebr.io import atomic_directory
from ebr.versions import (
    check_version,
    interest_paths,
    model_config,
    read_meta,
    verified_interest,
    version_paths,
)
from pipelines.batch.embed import DEAD_LETTER_NAME, DEFAULT_RUNNER
from pipelines.batch.joins import (
    READ_BATCH,
    _attach,
    _InterestTable,
    _InterestVectors,
    _repeated_rows,
)
from pipelines.batches import _slices
from pipelines.deadletter import (
    KEYS,
    REQUIRED,
    _CountIds,
    _OnlyOnce,
    _Validate,
    batch_ids,
    summarize,
)
from pipelines.towers import schema, tower

SHARD_ROWS = 50_000  # rows a shard reads and embeds (one ParDo call)
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
Shard = tuple[str, str, int, int]  # (kind, table path, first row, stop row)
TABLES = ("jobs", "members")


def combine(fn: Any, inputs: Iterable[Any]) -> Any:
    """A Beam ``CombineFn`` applied in this process (what ``CombineGlobally`` computes)."""
    acc = fn.create_accumulator()
    for x in inputs:
        acc = fn.add_input(acc, x)
    return fn.extract_output(acc)


def split(outputs: Iterable[Any]) -> tuple[list[Any], list[dict[str, Any]]]:
    """A DoFn's outputs -> (main outputs, dead-letter rows: its tagged outputs' values)."""
    main, dead = [], []
    for out in outputs:
        if isinstance(out, beam.pvalue.TaggedOutput):
            dead.append(out.value)
        else:
            main.append(out)
    return main, dead


def repeated_ids(path: Path, kind: str) -> dict[int, int]:
    """{id: copies} of the ids of ``kind`` found more than once in the table at ``path``."""
    table = pq.read_table(path, columns=[KEYS[kind]])
    return combine(_CountIds(), (batch_ids(b, KEYS[kind]) for b in _slices(table, READ_BATCH)))  # type: ignore[no-any-return]


def interest_table(path: Path, dim: int) -> tuple[tuple[Any, Any], list[dict[str, Any]]]:
    """The interest join's table ({member_id: vector}, {repeated id: copies}) and the dead
    letters of its refused and repeated rows, as ``AttachInterest`` makes them."""
    table = pq.read_table(path, columns=["member_id", "embedding"])
    check = _InterestVectors(dim)
    found, dead = [], []
    for batch in _slices(table, READ_BATCH):
        ok, refused = split(check.process(batch))
        found += ok
        dead += refused
    out = combine(_InterestTable(), found)
    return out, dead + list(_repeated_rows(out))


class _EmbedShard(beam.DoFn):
    """A shard -> its rows and dead letters written under ``parts`` (one Parquet file and
    one JSON-lines file); yields (kind, rows written, dead letters)."""

    def __init__(self, model_dir: str, parts: str, batch_size: int, dim: int,
                 repeated: dict[str, dict[int, int]], interest: Any) -> None:  # fmt: skip
        self._model, self._parts, self._size, self._dim = model_dir, parts, batch_size, dim
        self._repeated, self._interest = repeated, interest

    def process(self, shard: Shard) -> Iterable[tuple[str, int, int]]:
        kind, path, start, stop = shard
        table = pq.read_table(path).slice(start, stop - start)
        embed = tower(kind, self._model)
        once, validate = _OnlyOnce(kind), _Validate(kind, "validate", REQUIRED[kind])
        rows, dead = [], []
        for batch in _slices(table, self._size):
            kept, refused = split(once.process(batch, self._repeated[kind]))
            dead += refused
            for part in kept:
                good, refused = split(validate.process(part))
                dead += refused
                for records in good:
                    if kind == "members" and self._interest is not None:
                        records = _attach(records, self._interest)
                    out, refused_rows = embed.embed(records)
                    dead += refused_rows
                    if out is not None:
                        rows.append(out)
        name = Path(self._parts) / f"{kind}-{start:012d}"
        done = pa.concat_tables(rows) if rows else schema(KEYS[kind], self._dim).empty_table()
        pq.write_table(done, f"{name}.parquet")
        Path(f"{name}.jsonl").write_text("".join(_json(d) + "\n" for d in dead))
        yield kind, done.num_rows, len(dead)


def _json(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, allow_nan=False, ensure_ascii=False)


def shards(ws: Workspace, rows: int) -> list[Shard]:
    out = []
    for kind in TABLES:
        path = ws.data / f"{kind}.parquet"
        n = pq.ParquetFile(path).metadata.num_rows
        out += [(kind, str(path), a, min(n, a + rows)) for a in range(0, n, rows)]
    return out


def embed_catalog_sharded(
    ws: Workspace,
    version: str,
    batch_size: int = 256,
    runner_options: Sequence[str] = (),
    shard_rows: int = SHARD_ROWS,
) -> dict[str, Any]:
    """``pipelines.batch.embed.embed_catalog`` as shards (see the module docstring); returns
    its summary: rows per table, dead letters per stage, seconds, the output folder."""
    check_version(version)
    if batch_size < 1 or shard_rows < 1:
        raise ValueError(f"batch_size and shard_rows must be >= 1, got {batch_size}, {shard_rows}")
    paths = version_paths(ws, version)
    meta = read_meta(paths.model)
    cfg = model_config(meta)
    t0 = time.perf_counter()
    todo = shards(ws, shard_rows)
    options = list(runner_options)
    if not any(o.startswith("--runner") for o in options):
        options.insert(0, f"--runner={DEFAULT_RUNNER}")
    if any(DASK_RUNNER in o for o in options) and not any("dask_npartitions" in o for o in options):
        options.append(f"--dask_npartitions={len(todo)}")  # one shard a task: spread
    repeated = {
        kind: repeated_ids(ws.data / f"{kind}.parquet", kind)
        for kind in KEYS
        if kind in ("jobs", "members")
    }  # noqa: E501
    iv = verified_interest(ws, meta)
    interest, interest_dead = None, list[dict[str, Any]]()
    if iv is not None:
        interest, interest_dead = interest_table(interest_paths(ws, iv).members, cfg.interest_dim)
    out = paths.embeddings
    with atomic_directory(out, overwrite=True) as staging:
        parts = staging / "parts"
        parts.mkdir()
        fn = _EmbedShard(str(paths.model), str(parts), batch_size, cfg.dim, repeated, interest)
        pipeline = beam.Pipeline(options=PipelineOptions(options))
        _ = pipeline | "Shards" >> beam.Create(todo) | "Embed" >> beam.ParDo(fn)
        result = pipeline.run()
        try:
            result.wait_until_finish()
        finally:
            # The DaskRunner's client stays this process's default dask client: every later
            # dask compute here (Feast's file offline store materializes with dask) would go
            # to that cluster, or fail once it is gone.
            client = getattr(result, "client", None)
            if client is not None:
                client.close()
        for kind in TABLES:
            files = sorted(parts.glob(f"{kind}-*.parquet"))
            want = sum(s[0] == kind for s in todo)
            if len(files) != want:  # a runner that dropped work must not publish a short table
                raise RuntimeError(f"{kind}: {len(files)} of {want} shards written")
            pq.write_table(pa.concat_tables([pq.read_table(f) for f in files]),
                           staging / f"{kind}.parquet")  # fmt: skip
        dead = [_json(d) + "\n" for d in interest_dead]
        dead += [line for f in sorted(parts.glob("*.jsonl")) for line in f.open()]
        (staging / f"{DEAD_LETTER_NAME}.jsonl").write_text("".join(dead))
        for f in parts.iterdir():
            f.unlink()
        parts.rmdir()
    counts = {
        k: pq.ParquetFile(out / f"{k}.parquet").metadata.num_rows for k in ("jobs", "members")
    }
    return {**counts, **summarize(out / f"{DEAD_LETTER_NAME}.jsonl"), "shards": len(todo),
            "seconds": round(time.perf_counter() - t0, 2), "path": str(out)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workspace", type=Path, required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--shard-rows", type=int, default=SHARD_ROWS)
    p.add_argument("--runner", default=DEFAULT_RUNNER)
    args, beam_args = p.parse_known_args(argv)
    options = [f"--runner={args.runner}", *beam_args]
    return embed_catalog_sharded(Workspace(args.workspace), args.version, args.batch_size,
                                 options, args.shard_rows)  # fmt: skip


if __name__ == "__main__":
    print(main())
