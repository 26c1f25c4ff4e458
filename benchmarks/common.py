"""Shared benchmark plumbing: machine facts, result files, peak memory, a throwaway workspace.

Every benchmark writes ``benchmarks/results/<name>.json`` (figures plus the machine's CPU model,
thread count, library versions, date and the exact command) and ``<name>.png`` beside it, both
atomically (``ebr.io``), so a half-finished run never leaves a truncated result behind.
"""

from __future__ import annotations

import io
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

from ebr.io import atomic_write_bytes, atomic_write_json

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
TABLES = ("jobs", "members", "impressions")
PACKAGES = ("torch", "faiss-cpu", "apache-beam", "numpy", "pandas", "pyarrow")

T = TypeVar("T")


def cpu_model() -> str:
    """The ``model name`` line of /proc/cpuinfo ('unknown' where there is none, e.g. macOS)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)  # the line is in KiB
    except OSError:
        pass
    return None


def versions() -> dict[str, str]:
    """python plus the installed versions of the libraries the benchmarks exercise."""
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def command() -> str:
    """The command line this process was started with, as a user would retype it."""
    argv = list(getattr(sys, "orig_argv", sys.argv))
    return shlex.join(["python", *argv[1:]])


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """(wall seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


@dataclass(frozen=True)
class ChildRun:
    """One measured child process."""

    wall_s: float
    peak_rss_mib: float  # the child's own peak, not this process's nor earlier children's
    returncode: int
    stdout: str
    stderr: str


def run_child(cmd: Sequence[str], env: dict[str, str] | None = None) -> ChildRun:
    """Run ``cmd`` from the repo root and measure its wall time and peak RSS.

    ``os.wait4`` returns the rusage of exactly this child; RUSAGE_CHILDREN would instead report
    the maximum over every child reaped so far, hiding a smaller run behind a bigger one.
    """
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    # Files, not pipes: a chatty child can't fill a pipe buffer and block while we wait4.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=REPO_ROOT, env=full_env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        return ChildRun(
            wall_s=wall,
            peak_rss_mib=usage.ru_maxrss / 1024,
            returncode=proc.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


def write_result(name: str, threads: int, params: dict[str, Any], results: dict[str, Any]) -> Path:
    """Write ``results/<name>.json`` with the figures and the facts needed to reproduce them."""
    path = RESULTS_DIR / f"{name}.json"
    atomic_write_json(
        path,
        {
            "benchmark": name,
            "command": command(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpu_model": cpu_model(),
                "logical_cpus": os.cpu_count(),
                "mem_total_gib": mem_total_gib(),
                # The machines are shared: a high load average explains noisy timings.
                "load_average_1_5_15m_at_end": [round(x, 2) for x in os.getloadavg()],
            },
            "threads": threads,
            "versions": versions(),
            "params": params,
            "results": results,
        },
    )
    return path


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display; selected here, not at import time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def compact_log_ticks(axis: Any) -> None:
    """Ticks at 1-2-5 steps on a log axis, labelled 500, 20k, 1.5M instead of 2x10^4."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    def fmt(v: float, _pos: int) -> str:
        for div, unit in ((1e6, "M"), (1e3, "k")):
            if abs(v) >= div:
                return f"{v / div:g}{unit}"
        return f"{v:g}"

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(fmt))
    axis.set_minor_formatter(NullFormatter())


def save_figure(fig: Any, name: str) -> Path:
    """Write ``results/<name>.png`` atomically and close the figure."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    pyplot().close(fig)
    path = RESULTS_DIR / f"{name}.png"
    atomic_write_bytes(path, buf.getvalue())
    return path


def build_workspace(root: Path, n_jobs: int, epochs: int = 1, seed: int = 7) -> dict[str, Any]:
    """Marketplace of ``n_jobs`` + a model ``v1`` trained for ``epochs`` under ``root``.

    Quality is irrelevant to the benchmarks; the model only has to have the real shapes.
    Returns the seconds each step took and the table sizes.
    """
    import pandas as pd

    from ebr.config import DataConfig, ModelConfig, TrainConfig, Workspace
    from ebr.data.marketplace import write_marketplace
    from ebr.model.artifact import save_model
    from ebr.model.train import train

    ws = Workspace(root)
    dcfg = DataConfig(n_jobs=n_jobs, seed=seed)
    gen_s, counts = timed(lambda: write_marketplace(dcfg, ws.data))
    tables = {n: pd.read_parquet(ws.data / f"{n}.parquet") for n in TABLES}
    tcfg = TrainConfig(epochs=epochs)
    t0 = time.perf_counter()
    model, _ = train(tables["jobs"], tables["members"], tables["impressions"], ModelConfig(), tcfg)
    save_model(model, ws.models, "v1", {"note": f"benchmark workspace, {epochs} epoch(s)"})
    return {
        "n_jobs": int(counts["jobs"]),
        "n_members": int(counts["members"]),
        "generate_seconds": round(gen_s, 2),
        "train_seconds": round(time.perf_counter() - t0, 2),
        "epochs": epochs,
        "data_config": asdict(dcfg),
    }
