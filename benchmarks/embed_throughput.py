"""Batch-embedding throughput: the plain torch loop against the Beam pipeline, same batch size.

    python -m benchmarks.embed_throughput                        # 20k jobs, batch 256 (~5 min)
    python -m benchmarks.embed_throughput --n-jobs 5000 --repeats 1

Builds a throwaway workspace (marketplace of ``--n-jobs`` + a 1-epoch model: quality is
irrelevant here), then measures in this one process, ``--repeats`` times each, interleaved:

- ``torch_jobs``:    ``ebr.model.infer.encode_jobs`` over all job records (featurize + infer).
- ``beam_jobs``:     ``beam.Create(records) | EmbedRecords("jobs", ...)`` on the FnApiRunner.
- ``beam_create_only``: the same pipeline without ``EmbedRecords``: what ``beam.Create`` costs.
- ``torch_members``: ``encode_requests`` over all members (no query), for the mixed baseline.
- ``pipeline_run``:  the whole ``pipelines.embed.run`` (jobs + members, Parquet in and out).

Medians are reported, with Beam's items/s as a ratio of the torch loop's. The featurizer's text
hash cache is cleared before every measurement so each starts as cold as a fresh batch job.
Writes ``benchmarks/results/embed_throughput.json`` and ``embed_throughput.png``.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import apache_beam as beam
import numpy as np
import pandas as pd
import torch
import typer
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from benchmarks.common import (
    build_workspace,
    peak_rss_mib,
    pyplot,
    save_figure,
    timed,
    write_result,
)
from ebr.config import Workspace
from ebr.model import features
from ebr.model.artifact import load_item_tower, load_request_tower
from ebr.model.infer import encode_jobs, encode_requests
from pipelines.embed import EmbedRecords
from pipelines.embed import run as run_embed_pipeline

NAME = "embed_throughput"


class _CountRows(beam.DoFn):
    """Counts what reaches the end of the pipeline (a Beam metric: it survives pickling)."""

    def __init__(self) -> None:
        self._rows = Metrics.counter(NAME, "rows")

    def process(self, row: dict[str, Any]) -> Iterable[None]:
        self._rows.inc()
        return ()


def beam_jobs(records: list[dict[str, Any]], model_dir: Path | None, batch_size: int) -> int:
    """Run Create -> EmbedRecords -> count on the in-process FnApiRunner; rows that arrived.

    With ``model_dir=None`` the embedding step is left out, which prices ``beam.Create`` alone.
    """
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    rows = pipeline | "Create" >> beam.Create(records)
    if model_dir is not None:
        rows = (rows | "Embed" >> EmbedRecords("jobs", model_dir, batch_size)).records
    _ = rows | "Count" >> beam.ParDo(_CountRows())
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("rows"))["counters"]
    return int(sum(c.committed for c in counters))


def count_items(out: int | np.ndarray | dict[str, Any]) -> int:
    """Items a variant produced: a Beam count, an embedding matrix, or run()'s summary."""
    if isinstance(out, np.ndarray):
        return len(out)
    if isinstance(out, dict):
        return int(out["jobs"]) + int(out["members"])
    return int(out)


def cold(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` preceded by emptying the featurizer's text-hash cache (shared in-process)."""

    def wrapped() -> Any:
        features._hash_text.cache_clear()
        return fn()

    return wrapped


def plot(summary: dict[str, dict[str, Any]], batch_size: int, n_jobs: int) -> Any:
    plt = pyplot()
    labels = {
        "torch_jobs": "torch loop\njobs",
        "beam_jobs": "Beam EmbedRecords\njobs (Create)",
        "beam_create_only": "Beam Create only\n(no embedding)",
        "torch_jobs_members": "torch loop\njobs + members",
        "pipeline_run": "pipelines.embed.run\njobs + members, Parquet",
    }
    keys = list(labels)
    med = [summary[k]["items_per_s"] for k in keys]
    lo = [m - summary[k]["items_per_s_min"] for k, m in zip(keys, med, strict=True)]
    hi = [summary[k]["items_per_s_max"] - m for k, m in zip(keys, med, strict=True)]
    fig, ax = plt.subplots(figsize=(11, 4.8))
    colors = ["C0", "C1", "C7", "C0", "C1"]  # torch blue, Beam orange, Create-only grey
    bars = ax.bar(range(len(keys)), med, yerr=[lo, hi], capsize=4, color=colors)
    for bar, k in zip(bars, keys, strict=True):
        ratio = summary[k].get("ratio_vs_torch")
        text = f"{summary[k]['items_per_s']:,.0f}/s" + (f"\n{ratio:.2f}x torch" if ratio else "")
        # Above the min..max whisker, so neither hides the other.
        top = (bar.get_x() + bar.get_width() / 2, summary[k]["items_per_s_max"])
        ax.annotate(text, top, ha="center", va="bottom", xytext=(0, 4), textcoords="offset points")
    ax.set_xticks(range(len(keys)), [labels[k] for k in keys])
    ax.set_ylabel("items / s (median, bars = min..max)")
    ax.set_ylim(0, max(summary[k]["items_per_s_max"] for k in keys) * 1.2)
    ax.set_title(f"Embedding throughput, {n_jobs:,} jobs, batch size {batch_size}")
    return fig


def main(
    n_jobs: Annotated[int, typer.Option(help="marketplace size (jobs)")] = 20_000,
    batch_size: Annotated[int, typer.Option(help="torch loop and RunInference batch")] = 256,
    repeats: Annotated[int, typer.Option(help="measurements per variant (median)")] = 3,
    threads: Annotated[int, typer.Option(help="torch intra-op threads")] = 2,
    epochs: Annotated[int, typer.Option(help="training epochs of the throwaway model")] = 1,
    tmp_dir: Annotated[Path | None, typer.Option(help="where the workspace goes")] = None,
) -> None:
    """Measure both embedding paths and write results/embed_throughput.{json,png}."""
    if repeats < 1 or batch_size < 1:
        raise typer.BadParameter(
            f"repeats and batch size must be >= 1, got {repeats}, {batch_size}"
        )
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="ebr-bench-embed-", dir=tmp_dir) as tmp:
        ws = Workspace(Path(tmp))
        setup = build_workspace(ws.root, n_jobs, epochs=epochs)
        print("workspace:", setup, flush=True)
        model_dir = ws.models / "v1"
        jobs = pd.read_parquet(ws.data / "jobs.parquet").to_dict("records")
        members = pd.read_parquet(ws.data / "members.parquet").to_dict("records")
        item, cfg, _ = load_item_tower(model_dir)
        request, _, _ = load_request_tower(model_dir)
        argv = ["--workspace", str(ws.root), "--version", "v1", "--batch-size", str(batch_size)]
        variants: dict[str, tuple[int, Callable[[], Any]]] = {
            "torch_jobs": (len(jobs), lambda: encode_jobs(item, jobs, cfg, batch_size)),
            "beam_jobs": (len(jobs), lambda: beam_jobs(jobs, model_dir, batch_size)),
            "beam_create_only": (len(jobs), lambda: beam_jobs(jobs, None, batch_size)),
            "torch_members": (
                len(members),
                lambda: encode_requests(request, [None] * len(members), members, cfg, batch_size),
            ),
            "pipeline_run": (len(jobs) + len(members), lambda: run_embed_pipeline(argv)),
        }
        # Untimed warm-up on a small slice: first-call costs (lazy imports, allocator growth).
        warm = jobs[: 2 * batch_size]
        encode_jobs(item, warm, cfg, batch_size)
        beam_jobs(warm, model_dir, batch_size)
        seconds: dict[str, list[float]] = {k: [] for k in variants}
        for rep in range(repeats):  # interleaved, so drift on a shared machine hits all alike
            for key, (n_items, fn) in variants.items():
                s, out = timed(cold(fn))
                got = count_items(out)
                if got != n_items:
                    raise RuntimeError(f"{key} produced {got} items, expected {n_items}")
                seconds[key].append(s)
                print(f"repeat {rep} {key}: {s:.2f}s ({n_items / s:,.0f} items/s)", flush=True)

    def stats(n_items: int, secs: list[float]) -> dict[str, Any]:
        return {
            "items": n_items,
            "seconds": [round(s, 3) for s in secs],
            "median_seconds": round(statistics.median(secs), 3),
            "items_per_s": round(n_items / statistics.median(secs), 1),
            "items_per_s_min": round(n_items / max(secs), 1),
            "items_per_s_max": round(n_items / min(secs), 1),
        }

    summary = {k: stats(variants[k][0], seconds[k]) for k in variants}
    # Mixed torch baseline for the full run: the two torch loops back to back.
    mixed = [a + b for a, b in zip(seconds["torch_jobs"], seconds["torch_members"], strict=True)]
    summary["torch_jobs_members"] = stats(len(jobs) + len(members), mixed)
    tj, tm = summary["torch_jobs"]["items_per_s"], summary["torch_jobs_members"]["items_per_s"]
    summary["beam_jobs"]["ratio_vs_torch"] = round(summary["beam_jobs"]["items_per_s"] / tj, 3)
    summary["pipeline_run"]["ratio_vs_torch"] = round(
        summary["pipeline_run"]["items_per_s"] / tm, 3
    )
    # The same ratios at each variant's best run: the least disturbed by other load.
    for key, base in (("beam_jobs", "torch_jobs"), ("pipeline_run", "torch_jobs_members")):
        best = summary[key]["items_per_s_max"] / summary[base]["items_per_s_max"]
        summary[key]["ratio_vs_torch_best"] = round(best, 3)
    # Beam's embedding work with the cost of shipping records through beam.Create taken out.
    net = statistics.median(seconds["beam_jobs"]) - statistics.median(seconds["beam_create_only"])
    net_items_per_s = round(len(jobs) / net, 1) if net > 0 else None
    results = {
        "workspace": setup,
        "variants": summary,
        "beam_over_torch_items_per_s": summary["beam_jobs"]["ratio_vs_torch"],
        "beam_jobs_net_of_create_items_per_s": net_items_per_s,
        "beam_net_of_create_over_torch": round(net_items_per_s / tj, 3)
        if net_items_per_s
        else None,
        "pipeline_run_over_torch_items_per_s": summary["pipeline_run"]["ratio_vs_torch"],
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    params = {
        "n_jobs": n_jobs,
        "batch_size": batch_size,
        "repeats": repeats,
        "epochs": epochs,
        "runner": "FnApiRunner",
    }
    print(write_result(NAME, threads, params, results))
    print(save_figure(plot(summary, batch_size, n_jobs), NAME))


if __name__ == "__main__":
    typer.run(main)
