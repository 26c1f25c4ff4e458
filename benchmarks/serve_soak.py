"""The Serve app over hours, in short: RSS and CPU slope of the server's process tree while
busy (mixed traffic) and then idle.

    python -m benchmarks.serve_soak --workspace var/demo [--busy 20] [--idle 20]

Starts ``ebr serve`` on the workspace (its own process and Ray, loopback), warms it up, then
for ``--busy`` minutes sends ~``--rate`` requests/s from this process, one at a time: signed-in
and anonymous searches (ebr and hybrid, explain on some), recommendations, knowledge-base
searches when a corpus is built, places, sample members, and once a minute a judgment and the
judgments report; then nothing for ``--idle`` minutes. With ``--stream-rate R`` the workspace's
streaming job (started here when it is not running, and stopped after) takes ~R live marketplace
events a second (``ebr stream produce --live``) through warm-up and the busy phase, so the
replicas tail a growing slot log as they serve. The server's process tree (its Ray
workers included) is sampled every ``--every`` seconds (``benchmarks.stream_soak.Sampler``):
RSS (anonymous, file-backed), CPU, threads, fds. Flat memory: the RSS slope of the busy
phase's second half and of the idle phase near 0 MB/min.
Writes benchmarks/results/serve_soak.json and serve_soak.png (serve_soak_stream.* with a stream).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import pandas as pd
import typer

from benchmarks.common import REPO_ROOT, pyplot, save_figure, write_result
from benchmarks.stream_soak import Sampler, summary

NAME = "serve_soak"
QUERIES = ("registered nurse", "software developer", "sales manager", "electrician", "chef",
           "data analyst", "warehouse worker", "accountant", "teachr",
           "graphic designer")  # fmt: skip


def traffic(url: str, members: list[int], rate: float, stop: threading.Event,
            counts: dict[str, int]) -> None:  # fmt: skip
    """One request at a time at about ``rate`` a second until ``stop``; answers by status."""
    rng = random.Random(5)
    with httpx.Client(base_url=url, timeout=30) as c:
        corpora = [x["corpus"] for x in c.get("/v1/corpora").json() if x["live"]]
        last_judgment = 0.0
        while not stop.is_set():
            t0 = time.monotonic()
            member, query = rng.choice(members), rng.choice(QUERIES)
            kind = rng.random()
            if kind < 0.35:
                r = c.post("/v1/search", json={"query": query, "member_id": member, "k": 10,
                                               "explain": rng.random() < 0.2})  # fmt: skip
            elif kind < 0.6:
                r = c.post(
                    "/v1/search",
                    json={"query": query, "k": 10, "retrieval": rng.choice(["ebr", "hybrid"])},
                )
            elif kind < 0.8:
                r = c.get(f"/v1/members/{member}/recommendations", params={"k": 10})
            elif kind < 0.9 and corpora:
                r = c.post(f"/v1/corpora/{corpora[0]}/search", json={"query": query, "k": 5})
            else:
                r = c.get("/v1/places", params={"name": rng.choice(["London", "Berlin", "Paris"])})
            counts[str(r.status_code)] = counts.get(str(r.status_code), 0) + 1
            if time.monotonic() - last_judgment > 60:
                last_judgment = time.monotonic()
                hit = c.post("/v1/search", json={"query": query, "k": 3}).json()["results"]
                if hit:
                    c.put("/v1/judgments/soak", json={"query": query, "job_id": hit[0]["job_id"],
                                                      "relevant": True})  # fmt: skip
                    c.get("/v1/judgments/soak/report")
                c.get("/v1/sample-members")
            stop.wait(max(0.0, 1 / rate - (time.monotonic() - t0)))


def main(
    workspace: Annotated[Path, typer.Option(help="a workspace with a live release")] = Path(
        "var/demo"
    ),
    busy: Annotated[float, typer.Option(help="minutes of traffic")] = 20.0,
    idle: Annotated[float, typer.Option(help="minutes without traffic")] = 20.0,
    warmup: Annotated[float, typer.Option(help="minutes of traffic before sampling")] = 2.0,
    rate: Annotated[float, typer.Option(help="requests a second")] = 20.0,
    every: Annotated[float, typer.Option(help="seconds between samples")] = 10.0,
    port: Annotated[int, typer.Option(help="HTTP port")] = 8147,
    stream_rate: Annotated[
        float, typer.Option(help="live stream events a second while busy (0: no stream)")
    ] = 0.0,
) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    workspace = workspace.resolve()
    if stream_rate:
        from ebr.config import Workspace
        from pipelines.streaming import job

        ws = Workspace(workspace)
        started_job = not job.status(ws)["running"]
        if started_job:
            job.start(ws)
    log = open(REPO_ROOT / "var" / "serve_soak.log", "w")  # noqa: SIM115 - closed below
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--workspace", str(workspace),
                             "--port", str(port)], cwd=REPO_ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    results: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start: see var/serve_soak.log")
            time.sleep(1)
        members = pd.read_parquet(workspace / "data" / "members.parquet")["member_id"]
        members = [int(m) for m in members.head(2000)]
        sampler = Sampler(proc.pid)
        stop, counts = threading.Event(), {}
        load = threading.Thread(target=traffic, args=(url, members, rate, stop, counts))
        producer = None
        if stream_rate:
            producer = subprocess.Popen(
                [sys.executable, "-m", "cli", "stream", "produce", "--workspace", str(workspace),
                 "--live", "--rate", str(stream_rate), "--seconds", str((warmup + busy) * 60)],
                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        load.start()
        time.sleep(warmup * 60)
        busy_samples = sampler.phase(busy, every)
        stop.set()
        load.join()
        if producer is not None:
            producer.terminate()  # its own PID
            producer.wait(timeout=60)
        results["busy"] = {**summary(busy_samples), "answers": dict(counts), "rate": rate,
                           "stream_events_per_s": stream_rate}  # fmt: skip
        results["idle"] = summary(sampler.phase(idle, every))
    finally:
        if stream_rate and started_job:
            job.stop(ws)
        proc.send_signal(signal.SIGTERM)  # the server's own PID
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    for phase in ("busy", "idle"):
        s = {k: v for k, v in results[phase].items() if k != "series"}
        print(phase, s, flush=True)
    params = {"workspace": str(workspace), "busy_min": busy, "idle_min": idle,
              "warmup_min": warmup, "rate": rate, "every_s": every,
              "stream_rate": stream_rate}  # fmt: skip
    name = f"{NAME}_stream" if stream_rate else NAME  # the two soaks are kept apart
    write_result(name, 1, params, results)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for phase, offset in (("busy", 0.0), ("idle", busy)):
        series = results[phase]["series"]
        ax.plot([offset + s["t_min"] - series[0]["t_min"] for s in series],
                [s["rss_mb"] for s in series], label=f"{phase} (RSS)")  # fmt: skip
        ax.plot([offset + s["t_min"] - series[0]["t_min"] for s in series],
                [s.get("rss_anon_mb", 0.0) for s in series], ls=":",
                label=f"{phase} (anonymous)")  # fmt: skip
    ax.set_xlabel("minutes")
    ax.set_ylabel("MB, the server's process tree")
    ax.set_title("ebr serve: RSS busy, then idle")
    ax.legend()
    save_figure(fig, name)


if __name__ == "__main__":
    typer.run(main)
