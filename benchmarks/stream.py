"""Streaming Feature Cloud: freshness, sustained events/s, catch-up, and stream vs batch.

    python -m benchmarks.stream                        # over var/demo (~12 min)
    python -m benchmarks.stream --workspace var/demo --rate 20 --backlog-minutes 10

Works on private copies (``feature_repo.store.copy_workspace``) of ``--workspace`` (built by
``build_platform`` at 20k jobs when it is missing): ``base1``, whose only release not retired
is the live one, and ``base2``, the same plus a v2 candidate trained for one epoch (a second
serving release with its own towers, Feast views and slot: the streaming job dual-writes).
Both are kept in ``var/bench-stream/`` and reused (``--rebuild`` makes them again). Each
measurement runs on a fresh copy with its own Redis (``pipelines.streaming.broker.RedisServer``)
and the streaming job in its own process (``python -m pipelines.streaming.pipeline``), on the 2
cores it shares:

- ``catch_up``: a backlog of ``--backlog-minutes`` of live traffic at ``--rate`` events/s
  (``ebr.stream.traffic``: 80% job edits, 10% postings of freshly generated jobs, 5% closes,
  5% profile changes; event times spread over the window) is
  in the stream when the job starts; seconds until every entry is acknowledged (``catch_up_s``,
  the job's start-up included), the start-up alone (first acknowledgement), and the sustained
  events/s after it. Once with 1 serving release, once with 2, and once with 10% malformed
  entries mixed in (not JSON, unknown kind, unknown job, missing and mistyped fields) plus ten
  10 MB events: every one dead-lettered, and the whole catch-up's events/s against the clean
  one's (``vs_clean``; dead letters are acknowledged before the models have loaded, so the
  rate after the first acknowledgement is not comparable there).
- ``freshness``: the job and ``python -m serving.app`` run; a producer sends ``--rate``
  events/s; every second a probe job is posted and ``/v1/search`` (with a country filter) is
  polled every 50 ms until it returns the probe: event -> searchable seconds, p50/p95/p99
  (target p50 and p95 <= 5 s); again at ``--high-rate`` events/s (500: a quarter of what the
  job sustains alone, with the server, producer and prober on the same 2 cores).
- ``batch_ratio``: one update per catalogue job through the stream (1 release, polls of
  ``--batch-size``) vs the Beam batch transform over the same jobs at the same batch size
  (``benchmarks.embed_throughput.beam_jobs``: read, embed, write Parquet): items/s and ratio.

Writes ``benchmarks/results/stream.json`` and ``stream.png``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer

from benchmarks.common import pyplot, save_figure, write_result
from benchmarks.serve_load import Server
from ebr.config import BuildConfig, DataConfig, ReleaseConfig, TrainConfig, Workspace
from ebr.net import free_port
from ebr.release import provision as ops
from ebr.release import state as st
from ebr.release.targets import write_targets
from ebr.stream.events import FIELD, encode
from ebr.stream.traffic import Traffic
from ebr.versions import version_paths
from feature_repo.store import copy_workspace
from pipelines.streaming.broker import DEAD, STREAM, Broker, RedisServer, progress

NAME = "stream"
ROOT = Path("var/bench-stream")
TARGET_FRESHNESS_S = 5.0
REPO = Path(__file__).resolve().parents[1]


def source_workspace(path: Path) -> Path:
    """``path``, built at demo size (20k jobs, 1 epoch) when it holds no live release."""
    if path.is_dir() and st.read_state(Workspace(path))["live"]:
        return path
    from workflows.platform import build_platform

    cfg = BuildConfig(workspace=str(path), data=DataConfig(n_jobs=20_000),
                      train=TrainConfig(epochs=1))  # fmt: skip
    build_platform(config=cfg)
    return path


def bases(src: Path, rebuild: bool) -> tuple[Path, Path]:
    """(base1: only the live release serves, base2: base1 + a v2 candidate)."""
    one, two = ROOT / "base1", ROOT / "base2"
    if rebuild:
        shutil.rmtree(one, ignore_errors=True)
        shutil.rmtree(two, ignore_errors=True)
    if not one.is_dir():
        ws = copy_workspace(src, one)
        state = st.read_state(ws)
        if state["experiment"]:
            st.stop_experiment(ws)
        for rid, entry in state["releases"].items():
            if rid != state["live"] and entry["state"] != "retired":
                ops.retire(ws, rid, delete_slot=False)
    if not two.is_dir():
        from workflows.releases import provision_release

        ws = copy_workspace(one, two)
        iv = st.live_release(ws).interest_version or "v1"
        cfg = ReleaseConfig(workspace=str(two), version="v2", train_model=True,
                            interest_version=iv, train=TrainConfig(epochs=1))  # fmt: skip
        provision_release(config=cfg)
    return one, two


def make_events(ws: Workspace, n: int, span_s: float, seed: int) -> list[dict[str, str]]:
    """``n`` stream entries of live traffic (``ebr.stream.traffic``) over ``span_s`` seconds."""
    jobs = pd.read_parquet(ws.data / "jobs.parquet")
    members = pd.read_parquet(ws.data / "members.parquet")
    return Traffic(jobs, members, seed).backlog(n, span_s)


def with_malformed(
    entries: list[dict[str, str]], ws: Workspace, share: float, oversized: int
) -> list[dict[str, str]]:
    """``entries`` with ``share`` of malformed ones mixed in (not JSON, an unknown kind, an
    update of a job never posted, a record without its fields, a mistyped field) plus
    ``oversized`` events with a 10 MB description: what the job must dead-letter while the
    rest keeps flowing."""
    job = pd.read_parquet(ws.data / "jobs.parquet").iloc[0].to_dict()
    when, jid = datetime.now(UTC), int(job["job_id"])
    kinds = [
        {FIELD: "{not json"},
        {FIELD: json.dumps({"kind": "job_deleted", "id": jid})},
        encode("job_updated", 99_999_999, when, job | {"job_id": 99_999_999}),
        encode("job_updated", jid, when, {"job_id": jid, "title": "no other field"}),
        encode("job_updated", jid, when, job | {"lat": "north"}),
    ]
    out, bad = list(entries), int(len(entries) * share)
    rng = np.random.default_rng(3)
    for i, at in enumerate(sorted(rng.integers(0, len(out), bad).tolist(), reverse=True)):
        out.insert(at, kinds[i % len(kinds)])
    huge = encode("job_updated", jid, when, job | {"description": "x" * 10_000_000})
    for at in rng.integers(0, len(out), oversized).tolist():
        out.insert(at, huge)
    return out


def produce(broker: Broker, entries: list[dict[str, str]]) -> None:
    for i in range(0, len(entries), 1000):
        pipe = broker.client.pipeline(transaction=False)
        for e in entries[i : i + 1000]:
            pipe.xadd(STREAM, e)
        pipe.execute()


class Job:
    """``python -m pipelines.streaming.pipeline`` in its own process."""

    def __init__(self, ws: Path, url: str, log: Path, max_events: int) -> None:
        cmd = [sys.executable, "-m", "pipelines.streaming.pipeline", "--workspace", str(ws),
               "--redis-url", url, "--max-events", str(max_events)]  # fmt: skip
        self.out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.out, stderr=self.out)

    def stop(self) -> None:
        self.proc.terminate()  # its own PID
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.out.close()


def run_dir(name: str) -> Path:
    path = ROOT / "runs" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def catch_up(
    base: Path, name: str, entries: list[dict[str, str]], max_events: int
) -> dict[str, Any]:
    """Seconds to drain ``entries`` already in the stream when the job starts."""
    where = run_dir(name)
    ws = copy_workspace(base, where / "ws")
    server = RedisServer(where / "redis")
    try:
        broker = Broker(server.url, "bench")
        produce(broker, entries)
        t0 = time.perf_counter()
        job = Job(ws.root, server.url, where / "stream.log", max_events)
        first = None
        try:
            while True:
                length, done = progress(broker.client)
                if done and first is None:
                    first = time.perf_counter()
                if done >= length:
                    break
                if job.proc.poll() is not None:
                    raise RuntimeError(f"the job exited; see {where / 'stream.log'}")
                time.sleep(0.05)
            end = time.perf_counter()
        finally:
            job.stop()
        assert first is not None
        return {
            "events": len(entries),
            "serving_releases": [t.release_id for t in write_targets(ws)],
            "models": sorted({t.version for t in write_targets(ws)}),
            "startup_s": round(first - t0, 2),
            "catch_up_s": round(end - t0, 2),
            "events_per_s": round(len(entries) / max(end - first, 1e-9), 1),
            "events_per_s_including_startup": round(len(entries) / (end - t0), 1),
            "dead_letters": int(broker.client.xlen(DEAD)),
            "max_events_per_poll": max_events,
        }
    finally:
        server.stop()


def _q(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    p = np.percentile(values, [50, 95, 99])
    return {"p50": round(float(p[0]), 3), "p95": round(float(p[1]), 3),
            "p99": round(float(p[2]), 3), "max": round(max(values), 3)}  # fmt: skip


def freshness(base: Path, rate: float, seconds: float) -> dict[str, Any]:
    """Event -> returned by /v1/search, for one probe posting a second under ``rate`` ev/s."""
    where = run_dir("freshness")
    ws = copy_workspace(base, where / "ws")
    redis_server = RedisServer(where / "redis")
    broker = Broker(redis_server.url, "bench")
    job = Job(ws.root, redis_server.url, where / "stream.log", 256)
    server = Server(ws.root, free_port())
    stop, delays, misses = threading.Event(), [], 0
    traffic = Traffic(pd.read_parquet(ws.data / "jobs.parquet"),
                      pd.read_parquet(ws.data / "members.parquet"), seed=5)  # fmt: skip

    def steady() -> None:  # the background load: live traffic stamped now, at ``rate``
        producer = Broker(redis_server.url, "bench-producer")
        start = time.monotonic()
        for i, entry in enumerate(traffic.stream()):
            if stop.is_set():
                return
            producer.client.xadd(STREAM, entry)
            time.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))

    try:
        jobs = pd.read_parquet(ws.data / "jobs.parquet")
        template = jobs.iloc[0].to_dict()
        produce(broker, [encode("job_updated", int(template["job_id"]), datetime.now(UTC),
                                template)])  # fmt: skip
        while progress(broker.client)[1] < 1:  # warm: models and Feast loaded
            time.sleep(0.2)
        producer = threading.Thread(target=steady)
        producer.start()
        t_end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < t_end:
            jid, title = 30_000_000 + i, f"Zebrafish{i} curator"
            rec = template | {"job_id": jid, "title": title, "active": True}
            body = {"query": title, "k": 10,
                    "filter": {"term": {"country": [str(template["country"])]}}}  # fmt: skip
            t0 = time.monotonic()
            broker.client.xadd(STREAM, encode("job_posted", jid, datetime.now(UTC), rec))
            while True:
                resp = server.client.post("/v1/search", json=body)
                ids = (
                    [h["job_id"] for h in resp.json().get("results", [])] if resp.is_success else []
                )
                if jid in ids:
                    delays.append(time.monotonic() - t0)
                    break
                if time.monotonic() - t0 > 60:
                    misses += 1
                    break
                time.sleep(0.05)
            i += 1
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
        stop.set()
        producer.join()
    finally:
        stop.set()
        server.stop()
        job.stop()
        redis_server.stop()
    q = _q(delays)
    ok = (
        q["p50"] is not None
        and q["p50"] <= TARGET_FRESHNESS_S
        and (q["p95"] or 1e9) <= TARGET_FRESHNESS_S
    )
    return {"rate_events_per_s": rate, "seconds": seconds, "probes": len(delays), "misses": misses,
            "freshness_s": q, "delays_s": [round(d, 3) for d in delays],
            "target_s": TARGET_FRESHNESS_S, "meets_target": bool(ok and not misses)}  # fmt: skip


def batch_ratio(base: Path, batch_size: int) -> dict[str, Any]:
    """Stream items/s (one update per job, 1 release) vs the Beam batch transform's."""
    from benchmarks.embed_throughput import beam_jobs

    ws = Workspace(base)
    version = st.live_release(ws).version
    out = run_dir("batch") / "out"
    out.mkdir()
    t0 = time.perf_counter()
    model = version_paths(ws, version).model
    n_batch = beam_jobs(ws.data / "jobs.parquet", model, batch_size, out)
    batch_s = time.perf_counter() - t0
    jobs = pd.read_parquet(ws.data / "jobs.parquet").to_dict("records")
    when = datetime.now(UTC)
    entries = [encode("job_updated", int(j["job_id"]), when, j) for j in jobs]
    stream = catch_up(base, "batch-stream", entries, batch_size)
    batch_rate = n_batch / batch_s
    return {"items": len(entries), "batch_size": batch_size,
            "batch_items_per_s": round(batch_rate, 1), "batch_s": round(batch_s, 2),
            "stream_items_per_s": stream["events_per_s"], "stream": stream,
            "ratio": round(stream["events_per_s"] / batch_rate, 3),
            "ratio_including_startup": round(len(entries) / stream["catch_up_s"] / batch_rate, 3),
            }  # fmt: skip


def plot(results: dict[str, Any]) -> Any:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    for key in ("freshness", "freshness_high_rate"):
        delays = sorted(results.get(key, {}).get("delays_s", []))
        if delays:
            label = f"{results[key]['rate_events_per_s']:g} events/s"
            ax.plot(delays, np.arange(1, len(delays) + 1) / len(delays), "o-", label=label)
    ax.axvline(TARGET_FRESHNESS_S, color="grey", ls="--", label="target")
    q = results["freshness"]["freshness_s"]
    ax.set_title(f"event -> searchable: p50 {q['p50']} s, p95 {q['p95']} s")
    ax.set_xlabel("seconds")
    ax.set_ylabel("share of probes")
    ax.legend()
    ax = axes[1]
    keys = ["one_release", "two_releases"]
    ax.bar(keys, [results["catch_up"][k]["events_per_s"] for k in keys])
    for i, k in enumerate(keys):
        ax.annotate(f"catch-up {results['catch_up'][k]['catch_up_s']} s", (i, 0), ha="center",
                    va="bottom")  # fmt: skip
    ax.set_ylabel("events/s (after start-up)")
    ax.set_title(f"{results['catch_up']['one_release']['events']} events backlog")
    ax = axes[2]
    b = results["batch_ratio"]
    ax.bar(["batch (Beam)", "stream"], [b["batch_items_per_s"], b["stream_items_per_s"]])
    ax.set_ylabel("items/s")
    ax.set_title(f"stream / batch at batch {b['batch_size']}: {b['ratio']}x")
    fig.suptitle("streaming Feature Cloud (2 cores, local runner)")
    return fig


def main(
    workspace: Annotated[Path, typer.Option(help="a built platform (built when missing)")] = Path(
        "var/demo"
    ),
    rate: Annotated[float, typer.Option(help="steady events/s")] = 20.0,
    backlog_minutes: Annotated[float, typer.Option(help="backlog length at --rate")] = 10.0,
    probe_seconds: Annotated[float, typer.Option(help="freshness run length")] = 60.0,
    high_rate: Annotated[float, typer.Option(help="a second freshness run (0: none)")] = 500.0,
    batch_size: Annotated[int, typer.Option(help="events per poll / batch size")] = 256,
    rebuild: Annotated[bool, typer.Option(help="make the base copies again")] = False,
) -> None:
    src = source_workspace(workspace.resolve())
    one, two = bases(src, rebuild)
    n = int(rate * backlog_minutes * 60)
    entries = make_events(Workspace(one), n, backlog_minutes * 60, seed=1)
    results: dict[str, Any] = {"catch_up": {}}
    results["catch_up"]["one_release"] = catch_up(one, "catch-up-1", entries, batch_size)
    results["catch_up"]["two_releases"] = catch_up(two, "catch-up-2", entries, batch_size)
    dirty = with_malformed(entries, Workspace(one), share=0.1, oversized=10)
    bad = catch_up(one, "catch-up-bad", dirty, batch_size)
    bad["malformed_in"] = len(dirty) - len(entries)
    # Dead letters are acknowledged before the models load: compare whole catch-ups.
    clean = results["catch_up"]["one_release"]["events_per_s_including_startup"]
    bad["vs_clean"] = round(bad["events_per_s_including_startup"] / clean, 3)
    results["catch_up"]["one_release_malformed"] = bad
    print(results["catch_up"])
    results["freshness"] = freshness(one, rate, probe_seconds)
    print({k: v for k, v in results["freshness"].items() if k != "delays_s"})
    if high_rate > 0:
        results["freshness_high_rate"] = freshness(one, high_rate, probe_seconds)
        print({k: v for k, v in results["freshness_high_rate"].items() if k != "delays_s"})
    results["batch_ratio"] = batch_ratio(one, batch_size)
    print(results["batch_ratio"])
    params = {"workspace": str(src), "rate": rate, "backlog_minutes": backlog_minutes,
              "probe_seconds": probe_seconds, "batch_size": batch_size,
              "high_rate": high_rate}  # fmt: skip
    print(write_result(NAME, 2, params, results))
    print(save_figure(plot(results), NAME))


if __name__ == "__main__":
    typer.run(main)
