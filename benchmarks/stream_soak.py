"""Streaming job soak: the job's memory and CPU while idle and while busy, over many minutes.

    python -m benchmarks.stream_soak                      # 20 + 20 minutes over var/demo (~45 min)
    python -m benchmarks.stream_soak --minutes 3 --baseline-minutes 3 --freshness-seconds 0

Works on a private copy of ``--workspace`` (built at 20k jobs by
``benchmarks.stream.source_workspace`` when it is missing) in which only the live release
serves, kept in ``var/bench-soak/base`` (``--rebuild`` makes it again); each run on a fresh copy
of it. The job is started as ``ebr stream start`` starts it
(``pipelines.streaming.job.start``: its own session, its own loopback Redis) and stopped with
SIGTERM (``stop``). Every ``--sample-s`` seconds the benchmark reads the job process's RSS (and
its anonymous, file-backed and huge-page parts: this machine's kernel pages out cold file
pages, and folds madvised regions into transparent huge pages) and CPU time (psutil):

- warm-up: ``--warm-events`` events of live traffic (``ebr.stream.traffic``: edits, postings,
  closes, profile changes; the demo's job saw ~210 in its first minute), until acknowledged:
  towers, Feast and the slot log are loaded before the clock starts;
- ``idle``: ``--minutes`` with nothing sent (issue 20: the demo's idle job grew ~220 MB a minute);
- ``busy``: ``--minutes`` of live traffic at ``--rate`` events/s, as ``benchmarks.stream``
  sends it, with a probe posting every ``--probe-every-s``: seconds from XADD until the job has
  acknowledged it, i.e. every sink applied it (``applied_s``);
- ``baseline`` (``--baseline-minutes``, 0: skipped): the same job as one unbounded pipeline on
  the local DirectRunner (``--mode unbounded``, the form the job had before), idle;
- ``freshness`` (``--freshness-seconds``, 0: skipped): ``benchmarks.stream.freshness``, with
  ``python -m serving.app`` beside the job: event -> returned by ``/v1/search`` (target 5 s).

Per phase: the slope of a least-squares line through RSS (MB) over minutes, over the whole phase,
over its second half and of the anonymous part alone, the RSS at start and end, the mean CPU
(% of one core), and what the live slot's log holds at the end (its delta: state the job keeps
in memory, by design, until ``stream_job compact`` folds it into a new slot). Target:
a flat line, |slope| <= ``TARGET_SLOPE_MB_MIN`` in both phases. Writes
``benchmarks/results/stream_soak.json`` and ``stream_soak.png``; a missed target is recorded.
"""

from __future__ import annotations

import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import psutil
import redis
import typer

from benchmarks.common import pyplot, save_figure, write_result
from ebr.config import Workspace
from ebr.release import provision as ops
from ebr.release import state as st
from ebr.stream.events import encode
from ebr.stream.traffic import Traffic
from feature_repo.store import copy_workspace
from pipelines.streaming import job as stream_job
from pipelines.streaming.broker import GROUP, STREAM, progress

NAME = "stream_soak"
ROOT = Path("var/bench-soak")
TARGET_SLOPE_MB_MIN = 2.0  # flat: under 1 GB a week of continuous running
PROBE_BASE_ID = 40_000_000


def base_copy(src: Path, rebuild: bool) -> Path:
    """A copy of ``src`` whose only release not retired is the live one (reused while it was
    made from ``src``)."""
    path, origin = ROOT / "base", ROOT / "base.source"
    if rebuild or not origin.is_file() or origin.read_text() != str(src):
        shutil.rmtree(path, ignore_errors=True)
    if not path.is_dir():
        ws = copy_workspace(src, path)
        state = st.read_state(ws)
        if state["experiment"]:
            st.stop_experiment(ws)
        for rid, entry in state["releases"].items():
            if rid != state["live"] and entry["state"] != "retired":
                ops.retire(ws, rid, delete_slot=False)
        origin.write_text(str(src))
    return path


class Sampler:
    """RSS and CPU of one process (and its children), sampled into phases."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.t0 = time.monotonic()
        self._last = (self.t0, self._cpu_s())

    def _procs(self) -> list[psutil.Process]:
        return [self.proc, *self.proc.children(recursive=True)]

    def _cpu_s(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self._procs())

    def sample(self) -> dict[str, float]:
        now, cpu = time.monotonic(), self._cpu_s()
        busy = (cpu - self._last[1]) / max(now - self._last[0], 1e-9) * 100
        self._last = (now, cpu)
        rss = sum(p.memory_info().rss for p in self._procs()) / 2**20
        return {"t_min": round((now - self.t0) / 60, 4), "rss_mb": round(rss, 1),
                **self._status(), "cpu_pct": round(busy, 1), "threads": self.proc.num_threads(),
                "fds": self.proc.num_fds()}  # fmt: skip

    def _status(self) -> dict[str, float]:
        """Resident memory by kind, summed over the process tree (a Serve replica's heap is
        in a Ray worker, not in the process started): anonymous (heaps), file-backed
        (libraries, mapped files: the kernel may drop and re-read those pages) and anonymous
        huge pages (the kernel's khugepaged folds a madvised region into 2 MB pages at some
        point, which raises RSS by the pages it had not touched, without any allocation)."""
        fields = {"RssAnon:": "rss_anon_mb", "RssFile:": "rss_file_mb",
                  "AnonHugePages:": "anon_huge_mb"}  # fmt: skip
        kb = dict.fromkeys(fields.values(), 0)
        for proc in self._procs():
            for status in ("status", "smaps_rollup"):
                try:
                    text = Path(f"/proc/{proc.pid}/{status}").read_text()
                except OSError:  # gone, or not ours to read
                    continue
                for line in text.splitlines():
                    name, *value = line.split()
                    if name in fields:
                        kb[fields[name]] += int(value[0])
        return {k: round(v / 1024, 1) for k, v in kb.items()}

    def phase(self, minutes: float, every_s: float) -> list[dict[str, float]]:
        """Samples every ``every_s`` for ``minutes`` (the first one at once)."""
        self.sample()  # the CPU of the phase starts here
        out, end = [], time.monotonic() + minutes * 60
        while True:
            out.append(self.sample())
            if time.monotonic() >= end:
                return out
            time.sleep(min(every_s, max(0.0, end - time.monotonic())))


def slope(samples: list[dict[str, float]]) -> float | None:
    """MB per minute of a least-squares line through (t_min, rss_mb)."""
    if len(samples) < 3:
        return None
    t = np.array([s["t_min"] for s in samples])
    return round(float(np.polyfit(t - t[0], [s["rss_mb"] for s in samples], 1)[0]), 3)


def summary(samples: list[dict[str, float]]) -> dict[str, Any]:
    half = samples[len(samples) // 2 :]
    anon = [{**s, "rss_mb": s["rss_anon_mb"]} for s in samples if "rss_anon_mb" in s]
    return {
        "minutes": round(samples[-1]["t_min"] - samples[0]["t_min"], 2),
        "samples": len(samples),
        "slope_mb_per_min": slope(samples),
        "slope_second_half_mb_per_min": slope(half),
        "slope_anon_mb_per_min": slope(anon),
        "rss_start_mb": samples[0]["rss_mb"],
        "rss_end_mb": samples[-1]["rss_mb"],
        "rss_max_mb": max(s["rss_mb"] for s in samples),
        "cpu_pct_mean": round(float(np.mean([s["cpu_pct"] for s in samples[1:]])), 2),
        "threads_end": samples[-1]["threads"],
        "fds_start": samples[0]["fds"],
        "fds_end": samples[-1]["fds"],
        "series": samples,
    }


def slot_stats(ws: Workspace) -> dict[str, Any]:
    """What the live release's slot holds besides its snapshot (read-only, the log replayed):
    the job keeps the same delta in memory until a compaction folds it into a new slot."""
    from ebr.index.live.slot import open_live

    name = st.live_release(ws).slot.name
    stats = open_live(ws.slots / name, writable=False).stats()
    keys = ("delta_items", "dead_delta_positions", "live_items", "lsn", "log_bytes")
    return {k: stats[k] for k in keys}


def acked(client: redis.Redis, entry_id: str) -> bool:
    """Whether the job's group has delivered and acknowledged ``entry_id``."""
    group = next(g for g in client.xinfo_groups(STREAM) if g["name"].decode() == GROUP)  # type: ignore[union-attr]
    last = tuple(int(x) for x in group["last-delivered-id"].decode().split("-"))
    delivered = last >= tuple(int(x) for x in entry_id.split("-"))
    return delivered and not client.xpending_range(STREAM, GROUP, entry_id, entry_id, 1)


def wait_drained(client: redis.Redis, pid: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while progress(client)[1] < progress(client)[0]:
        if time.monotonic() > deadline or not psutil.pid_exists(pid):
            raise RuntimeError(f"the job did not drain the stream: {progress(client)}")
        time.sleep(0.2)


class Load:
    """Live traffic at ``rate`` events/s and a probe posting every ``probe_every_s`` (its
    seconds until acknowledged), in two threads, until ``stop``."""

    def __init__(self, url: str, ws: Workspace, rate: float, probe_every_s: float) -> None:
        self.url, self.rate, self.probe_every_s = url, rate, probe_every_s
        jobs = pd.read_parquet(ws.data / "jobs.parquet")
        self.traffic = Traffic(jobs, pd.read_parquet(ws.data / "members.parquet"), seed=23)
        self.template = jobs.iloc[0].to_dict()
        self.stop, self.sent, self.misses = threading.Event(), 0, 0
        self.applied_s: list[float] = []
        self._threads = [threading.Thread(target=self._send), threading.Thread(target=self._probe)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join()

    def _send(self) -> None:
        client, start = redis.Redis.from_url(self.url), time.monotonic()
        for i, entry in enumerate(self.traffic.stream()):
            if self.stop.is_set():
                return
            client.xadd(STREAM, entry)  # type: ignore[arg-type]
            self.sent += 1
            self.stop.wait(max(0.0, start + (i + 1) / self.rate - time.monotonic()))

    def _probe(self) -> None:
        client, i = redis.Redis.from_url(self.url), 0
        while not self.stop.wait(self.probe_every_s):
            jid = PROBE_BASE_ID + i
            rec = self.template | {"job_id": jid, "title": f"Soak probe {i}", "active": True}
            t0 = time.monotonic()
            eid = client.xadd(STREAM, encode("job_posted", jid, datetime.now(UTC), rec)).decode()  # type: ignore[union-attr,arg-type]
            while not acked(client, eid):
                if time.monotonic() - t0 > 60:
                    self.misses += 1
                    break
                time.sleep(0.02)
            else:
                self.applied_s.append(round(time.monotonic() - t0, 3))
            i += 1


def run_job(
    base: Path, name: str, args: list[str], phases: list[tuple[str, float, float]],
    warm_events: int, sample_s: float, probe_every_s: float,
) -> dict[str, Any]:  # fmt: skip
    """Start the job on a fresh copy of ``base`` (``stream_job.start``), warm it, then sample
    each phase ``(name, minutes, rate)`` (rate 0: idle)."""
    where = ROOT / "runs" / name
    shutil.rmtree(where, ignore_errors=True)
    ws = copy_workspace(base, where / "ws")
    handle = stream_job.start(ws, args=args)
    client = redis.Redis.from_url(handle["redis_url"])
    out: dict[str, Any] = {"args": args}
    try:
        sampler = Sampler(int(handle["pid"]))
        warm = Traffic(pd.read_parquet(ws.data / "jobs.parquet"),
                       pd.read_parquet(ws.data / "members.parquet"), seed=5)  # fmt: skip
        for entry in warm.backlog(warm_events, 60.0):
            client.xadd(STREAM, entry)  # type: ignore[arg-type]
        t0 = time.monotonic()
        wait_drained(client, int(handle["pid"]))
        out["warm_up"] = {"events": warm_events, "seconds": round(time.monotonic() - t0, 2),
                          "rss_mb": sampler.sample()["rss_mb"]}  # fmt: skip
        print(name, out["warm_up"], flush=True)
        for phase, minutes, rate in phases:
            if rate > 0:
                with Load(handle["redis_url"], ws, rate, probe_every_s) as load:
                    samples = sampler.phase(minutes, sample_s)
                wait_drained(client, int(handle["pid"]))
                extra = {"rate_events_per_s": rate, "events_sent": load.sent,
                         "applied_s": _q(load.applied_s), "probe_misses": load.misses}  # fmt: skip
            else:
                samples, extra = sampler.phase(minutes, sample_s), {}
            out[phase] = summary(samples) | extra | {"slot": slot_stats(ws)}
            print(name, phase, {k: v for k, v in out[phase].items() if k != "series"}, flush=True)
        out["log_tail"] = Path(handle["log"]).read_text(errors="replace")[-1500:]
    finally:
        stream_job.stop(ws, stop_redis=True)
    return out


def _q(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    p = np.percentile(values, [50, 95, 99])
    return {"n": len(values), "p50": round(float(p[0]), 3), "p95": round(float(p[1]), 3),
            "p99": round(float(p[2]), 3), "max": round(max(values), 3)}  # fmt: skip


def plot(results: dict[str, Any]) -> Any:
    plt = pyplot()
    fig, (ax, cx) = plt.subplots(1, 2, figsize=(14, 4.8))
    job = results["micro_batch"]
    for phase, color in (("idle", "tab:blue"), ("busy", "tab:orange")):
        s = job[phase]["series"]
        ax.plot([x["t_min"] for x in s], [x["rss_mb"] for x in s], color=color,
                label=f"{phase}: {job[phase]['slope_mb_per_min']} MB/min")  # fmt: skip
        if all("rss_anon_mb" in x for x in s):
            anon = f"{phase}, anonymous: {job[phase]['slope_anon_mb_per_min']} MB/min"
            ax.plot([x["t_min"] for x in s], [x["rss_anon_mb"] for x in s], color=color, ls=":",
                    label=anon)  # fmt: skip
        cx.plot([x["t_min"] for x in s][1:], [x["cpu_pct"] for x in s][1:], color=color,
                label=f"{phase}: mean {job[phase]['cpu_pct_mean']}%")  # fmt: skip
    base = results.get("baseline_unbounded")
    if base:
        s = base["idle"]["series"]
        ax.plot(
            [x["t_min"] for x in s],
            [x["rss_mb"] for x in s],
            color="tab:red",
            ls="--",
            label=f"unbounded (old), idle: {base['idle']['slope_mb_per_min']} MB/min",
        )
    ax.set_xlabel("minutes since the job was warm")
    ax.set_ylabel("RSS (MB)")
    ax.set_title("streaming job memory (micro-batches on the FnApiRunner)")
    ax.legend()
    cx.set_xlabel("minutes since the job was warm")
    cx.set_ylabel("CPU (% of one core)")
    cx.set_title("streaming job CPU")
    cx.legend()
    return fig


def main(
    workspace: Annotated[Path, typer.Option(help="a built platform (built when missing)")] = Path(
        "var/demo"
    ),
    minutes: Annotated[float, typer.Option(help="length of the idle and of the busy phase")] = 20.0,
    rate: Annotated[float, typer.Option(help="busy phase: events/s of live traffic")] = 20.0,
    sample_s: Annotated[float, typer.Option(help="seconds between samples")] = 5.0,
    warm_events: Annotated[int, typer.Option(help="events before the clock starts")] = 210,
    probe_every_s: Annotated[float, typer.Option(help="busy phase: a probe posting every")] = 5.0,
    baseline_minutes: Annotated[float, typer.Option(help="old unbounded form, idle (0: no)")] = 0.0,
    freshness_seconds: Annotated[float, typer.Option(help="event->searchable run (0: no)")] = 60.0,
    rebuild: Annotated[bool, typer.Option(help="make the base copy again")] = False,
) -> None:
    from benchmarks.stream import freshness, source_workspace

    src = source_workspace(workspace.resolve())
    base = base_copy(src, rebuild)
    results: dict[str, Any] = {}
    phases = [("idle", minutes, 0.0), ("busy", minutes, rate)]
    results["micro_batch"] = run_job(base, "micro-batch", [], phases, warm_events, sample_s,
                                     probe_every_s)  # fmt: skip
    if baseline_minutes > 0:
        results["baseline_unbounded"] = run_job(
            base, "unbounded", ["--mode", "unbounded"], [("idle", baseline_minutes, 0.0)],
            warm_events, sample_s, probe_every_s,
        )  # fmt: skip
    if freshness_seconds > 0:
        results["freshness_searchable"] = freshness(base, rate, freshness_seconds)
        fresh = results["freshness_searchable"]
        print({k: v for k, v in fresh.items() if k != "delays_s"}, flush=True)
    job = results["micro_batch"]
    slopes = {p: job[p]["slope_mb_per_min"] for p in ("idle", "busy")}
    results["target_slope_mb_per_min"] = TARGET_SLOPE_MB_MIN
    results["meets_target"] = all(s is not None and abs(s) <= TARGET_SLOPE_MB_MIN
                                  for s in slopes.values())  # fmt: skip
    params = {"workspace": str(src), "minutes": minutes, "rate": rate, "sample_s": sample_s,
              "warm_events": warm_events, "probe_every_s": probe_every_s,
              "baseline_minutes": baseline_minutes,
              "freshness_seconds": freshness_seconds}  # fmt: skip
    print({"slopes_mb_per_min": slopes, "meets_target": results["meets_target"]})
    print(write_result(NAME, 2, params, results))
    print(save_figure(plot(results), NAME))


if __name__ == "__main__":
    typer.run(main)
