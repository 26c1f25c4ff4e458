"""Marketplace generation: wall time, peak memory and output size per catalogue size.

    python -m benchmarks.generate                       # 10k, 100k, 1M jobs (~3 min, ~8 GiB)
    python -m benchmarks.generate --sizes 10000,100000  # quicker

Each size runs ``python -m ebr.data.marketplace --n-jobs N --out <tmp>`` in a fresh child
process, so the peak RSS is that size's own (not the largest so far), and the child's wall time
includes interpreter start-up and imports. The Parquet output is deleted afterwards.
Writes ``benchmarks/results/generate.json`` and ``generate.png``.
"""

from __future__ import annotations

import ast
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import pyarrow.parquet as pq
import typer

from benchmarks.common import (
    TABLES,
    compact_log_ticks,
    pyplot,
    run_child,
    save_figure,
    write_result,
)
from ebr.config import DataConfig

NAME = "generate"


def parse_sizes(sizes: str) -> list[int]:
    """'10000,100000' -> [10000, 100000] (sorted, unique); raises on anything else."""
    try:
        out = sorted({int(s) for s in sizes.split(",") if s.strip()})
    except ValueError:
        raise typer.BadParameter(f"sizes must be comma-separated integers, got {sizes!r}") from None
    if not out or out[0] < 50:
        raise typer.BadParameter(f"sizes must be >= 50 (DataConfig's minimum), got {sizes!r}")
    return out


def measure(n_jobs: int, seed: int, threads: int, tmp_root: Path) -> dict[str, Any]:
    """Generate ``n_jobs`` in a child process; row counts and file sizes, then delete it."""
    out_dir = tmp_root / f"n{n_jobs}"
    cmd = [sys.executable, "-m", "ebr.data.marketplace", "--n-jobs", str(n_jobs)]
    cmd += ["--out", str(out_dir), "--seed", str(seed)]
    # numpy's BLAS pool would otherwise size itself to the machine, not to the recorded count.
    env = {v: str(threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    try:
        run = run_child(cmd, env)
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {run.returncode}:\n{run.stderr[-3000:]}")
        # The CLI prints write_marketplace's dict; its 'seconds' excludes start-up and imports.
        printed = ast.literal_eval(run.stdout.strip().splitlines()[-1])
        rows = {t: pq.ParquetFile(out_dir / f"{t}.parquet").metadata.num_rows for t in TABLES}
        sizes = {t: (out_dir / f"{t}.parquet").stat().st_size / 2**20 for t in TABLES}
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return {
        "n_jobs": n_jobs,
        "wall_seconds": round(run.wall_s, 2),
        "generate_write_seconds": printed["seconds"],
        "peak_rss_mib": round(run.peak_rss_mib, 1),
        "rows": rows,
        "engaged_impressions": printed["engaged"],
        "parquet_mib": {t: round(s, 2) for t, s in sizes.items()},
        "parquet_mib_total": round(sum(sizes.values()), 2),
    }


def plot(runs: list[dict[str, Any]]) -> Any:
    plt = pyplot()
    n = [r["n_jobs"] for r in runs]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    panels = (
        ("wall_seconds", "wall time (s, whole process)"),
        ("peak_rss_mib", "peak RSS (MiB)"),
        ("parquet_mib_total", "Parquet on disk (MiB, 3 tables)"),
    )
    for ax, (key, label) in zip(axes, panels, strict=True):
        y = [r[key] for r in runs]
        ax.loglog(n, y, "o-")
        compact_log_ticks(ax.xaxis)
        compact_log_ticks(ax.yaxis)
        for x, v in zip(n, y, strict=True):
            ax.annotate(f"{v:,.1f}", (x, v), textcoords="offset points", xytext=(4, -12))
        ax.set_xlabel("jobs")
        ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("Marketplace generation (python -m ebr.data.marketplace), one process per size")
    return fig


def main(
    sizes: Annotated[str, typer.Option(help="comma-separated job counts")] = "10000,100000,1000000",
    seed: Annotated[int, typer.Option(help="DataConfig seed")] = 7,
    threads: Annotated[int, typer.Option(help="BLAS/OpenMP threads per child")] = 2,
    tmp_dir: Annotated[Path | None, typer.Option(help="where the temporary tables go")] = None,
) -> None:
    """Measure generation at each size and write results/generate.{json,png}."""
    ns = parse_sizes(sizes)
    runs = []
    with tempfile.TemporaryDirectory(prefix="ebr-bench-gen-", dir=tmp_dir) as tmp:
        for n in ns:
            r = measure(n, seed, threads, Path(tmp))
            print(r, flush=True)
            runs.append(r)
    base = runs[0]
    for r in runs:
        # Scaling against the smallest size measured in this run: 1.0 per unit of size = linear.
        r["size_ratio_vs_smallest"] = r["n_jobs"] / base["n_jobs"]
        r["time_ratio_vs_smallest"] = round(r["wall_seconds"] / base["wall_seconds"], 2)
        r["memory_ratio_vs_smallest"] = round(r["peak_rss_mib"] / base["peak_rss_mib"], 2)
        r["jobs_per_second"] = round(r["n_jobs"] / r["wall_seconds"], 1)
    # The children run DataConfig's defaults (only n_jobs and seed change): record them.
    defaults = {k: v for k, v in asdict(DataConfig(seed=seed)).items() if k != "n_jobs"}
    params = {"sizes": ns, "seed": seed, "data_config_besides_n_jobs": defaults}
    print(write_result(NAME, threads, params, {"runs": runs}))
    print(save_figure(plot(runs), NAME))


if __name__ == "__main__":
    typer.run(main)
