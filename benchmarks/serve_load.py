"""Serving releases under load, over HTTP, against the same work in process (one run).

    python -m benchmarks.serve_load --workspace var/demo     # a workspace built by `make demo`

Starts ``python -m serving.app`` on the workspace (its own process and Ray, loopback, an admin
token), provisions a second release of the live version when there is only one (same
artifacts, its own record: a second copy of everything served), then:

- **overhead**: ``--requests`` sequential POST /v1/search (query + member, k=10, ebr and hybrid)
  p50/p95/p99 over HTTP vs the same work in this process (Feast read through the release's
  feature service + spelling + request tower + search + response rows: ``Release.search`` of
  ``serving.loaded_release``, the ingress's own call); target p50 <= 1.5x in-process;
- **throughput**: open-loop Poisson arrivals at rising rates (``--seconds`` each) for one
  release, then for two releases in an experiment: achieved QPS, p50/p99, share answered;
  capacity = the highest rate with p99 < 100 ms and >= 99% answered 200;
- **switch**: at ~60% of capacity, promote the second release, then roll back: failed requests
  (target 0), responses whose slot is not their release's (target 0), p99 within 1 s of each
  switch vs steady;
- **overload**: 3x capacity for ``--seconds``: share answered 503, their p50 (fast?), p99 of
  those accepted; then 0.5x capacity: seconds until a 1 s window is all 200 with p99 < 100 ms.

Load and server share the machine's 2 cores: absolute QPS is a floor. Writes
benchmarks/results/serve_load.json and serve_load.png.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer

from benchmarks.common import REPO_ROOT, pyplot, save_figure, write_result

NAME = "serve_load"
TOKEN = "serve-load-benchmark"
TARGET_RATIO = 1.5  # HTTP p50 / in-process p50 (the issue's)
P99_LIMIT_S = 0.100
RATES = (10, 20, 40, 60, 80, 100, 130, 160, 200, 250, 300)


def quantiles(values: list[float]) -> dict[str, float | None]:
    return {f"p{q}": pct(values, q) for q in (50, 95, 99)}


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) * 1e3 if values else None


def summary(
    samples: list[tuple[float, int, float, dict[str, Any]]], seconds: float
) -> dict[str, Any]:
    """(send time, status, latency s, body) samples -> achieved QPS, latency, statuses."""
    ok = [lat for _, status, lat, _ in samples if status == 200]
    shed = [lat for _, status, lat, _ in samples if status == 503]
    return {
        "sent": len(samples), "answered_qps": round(len(ok) / seconds, 1),
        "ok_share": round(len(ok) / max(len(samples), 1), 4),
        "shed_share": round(len(shed) / max(len(samples), 1), 4),
        "other_failures": sum(1 for _, s, _, _ in samples if s not in (200, 503)),
        "p50_ms": pct(ok, 50), "p95_ms": pct(ok, 95), "p99_ms": pct(ok, 99),
        "shed_p50_ms": pct(shed, 50),
    }  # fmt: skip


class Server:
    """``python -m serving.app`` in its own process (SIGTERM by PID to stop)."""

    def __init__(self, workspace: Path, port: int, app_args: str = "{}") -> None:
        import httpx

        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "EBR_ADMIN_TOKEN": TOKEN}
        cmd = [sys.executable, "-m", "serving.app", "--workspace", str(workspace),
               "--port", str(port), "--app-args", app_args]  # fmt: skip
        self.log = open(workspace / "serve_load.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if self.client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(1)
        raise RuntimeError(f"serving did not start; see {workspace / 'serve_load.log'}")

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        resp = self.client.request(method, path, json=body,
                                   headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        resp.raise_for_status()
        return resp.json()

    def stop(self) -> None:
        self.client.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def bodies(members: list[int], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Search bodies: query + member (k=10), queries from the marketplace's job titles."""
    rng = random.Random(seed)
    queries = ["data engineer", "nurse", "sales manager", "software developer", "accountant",
               "warehouse worker", "teacher", "project manager", "chef", "electrician"]  # fmt: skip
    return [{"query": rng.choice(queries), "member_id": rng.choice(members), "k": 10}
            for _ in range(n)]  # fmt: skip


VARIANTS = (("ebr", True), ("ebr", False), ("hybrid", True), ("hybrid", False))


def overhead(server: Server, workspace: Path, members: list[int], n: int) -> dict[str, Any]:
    """Sequential HTTP vs the same work in process, configured alike: the in-process release
    runs FAISS, torch and BLAS at one thread each as a replica does (``one_thread``; the
    threads of both sides read with threadpoolctl and reported), the same requests, the four
    variants (ebr / hybrid, with and without a member) round robin, which side goes first
    alternating."""
    from ebr.config import Workspace
    from ebr.release.state import live_release
    from feature_repo.store import open_store
    from serving.loaded_release import LoadedRelease, one_thread, thread_counts

    ws = Workspace(workspace)
    rel = LoadedRelease(ws, open_store(ws.feature_repo), live_release(ws), False, 1.0)
    one_thread()  # after the load: the pools its libraries brought are limited too
    health = server.client.get("/healthz").json()
    served = health["releases"].get(health["release"], {}).get("threads")
    times: dict[tuple[str, bool], tuple[list[float], list[float]]] = {v: ([], []) for v in VARIANTS}
    reqs = bodies(members, 4 * (n + 30), seed=1)
    for i, body in enumerate(reqs):
        retrieval, signed_in = VARIANTS[i % len(VARIANTS)]
        member = body["member_id"] if signed_in else None
        payload = {"query": body["query"], "k": body["k"], "retrieval": retrieval}
        if signed_in:
            payload["member_id"] = member
        took = {}
        for side in ("http", "local") if i % 8 < 4 else ("local", "http"):  # who goes first
            t0 = time.perf_counter()
            if side == "http":
                resp = server.client.post("/v1/search", json=payload)
                assert resp.status_code == 200, resp.text
            else:
                rel.answer(body["query"], member, body["k"], None, retrieval)
            took[side] = time.perf_counter() - t0
        if i >= 4 * 30:  # warm-up
            times[(retrieval, signed_in)][0].append(took["http"])
            times[(retrieval, signed_in)][1].append(took["local"])
    out: dict[str, Any] = {"threads": {"in_process": thread_counts(), "replica": served}}
    for (retrieval, signed_in), (http_s, local_s) in times.items():
        ratio = statistics.median(http_s) / statistics.median(local_s)
        key = f"{retrieval}{'+member' if signed_in else ''}"
        out[key] = {"http_ms": quantiles(http_s), "in_process_ms": quantiles(local_s),
                    "p50_ratio": round(ratio, 2),
                    "meets_target": ratio <= TARGET_RATIO}  # fmt: skip
        print("overhead", key, out[key], flush=True)
    print("threads", out["threads"], flush=True)
    return out


async def open_loop(
    url: str,
    reqs: list[dict[str, Any]],
    rate: float,
    seconds: float,
    at: dict[float, Any] | None = None,
) -> list[tuple[float, int, float, dict[str, Any]]]:
    """Poisson arrivals at ``rate``/s for ``seconds``: every request is sent at its time, whether
    or not earlier ones returned. ``at``: {seconds from start: coroutine function} run then."""
    import httpx

    rng = random.Random(int(rate * 1000))
    samples: list[tuple[float, int, float, dict[str, Any]]] = []
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def one(body: dict[str, Any], sent: float) -> None:
            t0 = time.perf_counter()
            try:
                resp = await client.post("/v1/search", json=body)
                status, data = resp.status_code, (resp.json() if resp.status_code == 200 else {})
            except httpx.HTTPError:
                status, data = 0, {}
            samples.append((sent, status, time.perf_counter() - t0, data))

        start, tasks, t, i = time.perf_counter(), [], 0.0, 0
        pending = dict(sorted((at or {}).items()))
        while t < seconds:
            t += rng.expovariate(rate)
            while pending and next(iter(pending)) <= t:
                when = next(iter(pending))
                tasks.append(asyncio.create_task(pending.pop(when)()))
            delay = start + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(reqs[i % len(reqs)], t)))
            i += 1
        await asyncio.gather(*tasks)
    return samples


class TreeCPU:
    """CPU seconds (user + system) of a process and its descendants: the server's whole tree
    (``serving.app``, Ray's GCS, raylet and workers, the replicas, HAProxy)."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)

    def seconds(self) -> float:
        import psutil

        total = 0.0
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                t = proc.cpu_times()
            except psutil.Error:  # ended between the listing and the read
                continue
            total += t.user + t.system
        return total


def accounted(
    run: Callable[[], list[tuple[float, int, float, dict[str, Any]]]],
    seconds: float,
    tree: TreeCPU | None,
) -> dict[str, Any]:
    """``summary`` of one open-loop step with the CPU it took on each side: this process (the
    load generator: its own cost, which shares the 2 cores) and the server's process tree,
    in cores busy over the step, and the server's CPU ms per answered request."""
    gen0, srv0, t0 = time.process_time(), tree.seconds() if tree else 0.0, time.perf_counter()
    samples = run()
    wall = time.perf_counter() - t0
    stats = summary(samples, seconds)
    stats["generator_cpu_cores"] = round((time.process_time() - gen0) / wall, 3)
    if tree is not None:
        server_s = tree.seconds() - srv0
        ok = sum(1 for _, status, _, _ in samples if status == 200)
        stats["server_cpu_cores"] = round(server_s / wall, 3)
        stats["server_cpu_ms_per_ok"] = round(server_s * 1e3 / ok, 3) if ok else None
    return stats


def capacity(
    url: str, reqs: list[dict[str, Any]], seconds: float, tree: TreeCPU | None = None
) -> dict[str, Any]:
    """Rising open-loop rates until p99 >= 100 ms or < 99% answered twice in a row."""
    steps, best, misses = [], None, 0
    for rate in RATES:
        stats = accounted(lambda r=rate: asyncio.run(open_loop(url, reqs, r, seconds)), seconds,
                          tree)  # fmt: skip
        steps.append({"rate": rate, **stats})
        print("rate", rate, stats, flush=True)
        ok = stats["p99_ms"] is not None and stats["p99_ms"] < P99_LIMIT_S * 1e3
        if ok and stats["ok_share"] >= 0.99:
            best, misses = rate, 0
        else:
            misses += 1
            if misses >= 2:
                break
    return {"steps": steps, "capacity_qps": best}


def switch(server: Server, reqs: list[dict[str, Any]], rate: float, seconds: float,
           releases: tuple[str, str], slots: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    """Promote then roll back under open-loop load at ``rate``."""
    times: dict[str, float] = {}

    async def promote() -> None:
        times["promote"] = seconds / 3
        await asyncio.to_thread(server.admin, "POST", "/admin/promote", {"release": releases[1]})

    async def rollback() -> None:
        times["rollback"] = 2 * seconds / 3
        await asyncio.to_thread(server.admin, "POST", "/admin/rollback", {"to": releases[0]})

    samples = asyncio.run(open_loop(server.url, reqs, rate, seconds,
                                    {seconds / 3: promote, 2 * seconds / 3: rollback}))  # fmt: skip
    ok = [s for s in samples if s[1] == 200]
    mixed = [b for *_, b in ok if slots.get(b["release"]) != b["slot"]]
    near = [lat for t, _, lat, _ in ok if any(abs(t - w) <= 1.0 for w in times.values())]
    steady = [lat for t, _, lat, _ in ok if all(abs(t - w) > 1.0 for w in times.values())]
    seen = [b["release"] for *_, b in sorted(ok, key=lambda s: s[0])]
    return {"rate": rate, **summary(samples, seconds), "failed": len(samples) - len(ok),
            "mixed_version_responses": len(mixed), "p99_switch_ms": pct(near, 99),
            "p99_steady_ms": pct(steady, 99), "releases_seen_in_order": list(dict.fromkeys(seen)),
            "switch_times_s": times}  # fmt: skip


def overload(url: str, reqs: list[dict[str, Any]], cap: float, seconds: float,
             tree: TreeCPU | None = None) -> dict[str, Any]:  # fmt: skip
    """3x capacity, then 0.5x: shed share, accepted p99, recovery time."""
    at_3x = accounted(lambda: asyncio.run(open_loop(url, reqs, 3 * cap, seconds)), seconds, tree)
    calm = asyncio.run(open_loop(url, reqs, 0.5 * cap, seconds))
    recovered = None
    for second in range(int(seconds)):
        window = [s for s in calm if second <= s[0] < second + 1]
        lat = [s[2] for s in window if s[1] == 200]
        if window and len(lat) == len(window) and pct(lat, 99) < P99_LIMIT_S * 1e3:
            recovered = second
            break
    return {"at_3x": {"rate": 3 * cap, **at_3x},
            "after_at_half": {"rate": 0.5 * cap, **summary(calm, seconds)},
            "recovery_s": recovered}  # fmt: skip


def second_release(workspace: Path) -> tuple[str, str]:
    """(live release, another release of the live version: provisioned when there is none)."""
    from ebr.config import GateConfig, Workspace
    from ebr.release.provision import provision
    from ebr.release.record import read_release, release_version
    from ebr.release.state import read_state

    ws = Workspace(workspace)
    state = read_state(ws)
    live = state["live"]
    others = [r for r, e in state["releases"].items() if r != live and e["state"] != "retired"]
    if others:
        return live, others[-1]
    slot = read_release(ws, live).slot.name
    other = provision(ws, release_version(live), slot, GateConfig(min_coverage=0.0)).id
    return live, str(other)


def plt_axes() -> Any:
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    return fig, ax


def plot_overhead(fig_ax: Any, results: dict[str, Any]) -> Any:
    """HTTP vs in-process p50 per variant on ``fig_ax`` = (figure, axes); -> the figure."""
    fig, ax = fig_ax
    labels = [name for name in results["overhead"] if name != "threads"]
    for j, who in enumerate(("http_ms", "in_process_ms")):
        vals = [results["overhead"][r][who]["p50"] for r in labels]
        ax.bar(np.arange(len(labels)) + (j - 0.5) * 0.38, vals, 0.38, label=who)
    ax.set_xticks(np.arange(len(labels)), labels)
    ax.set_ylabel("p50 ms")
    ax.set_title(f"search p50, HTTP vs in process (target <= {TARGET_RATIO}x)")
    ax.legend()
    return fig


def plot(results: dict[str, Any], title: str) -> Any:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    plot_overhead((fig, axes[0]), results)
    for ax, key in zip(axes[1:], ("one_release", "two_releases"), strict=True):
        steps = results["throughput"][key]["steps"]
        ax.plot(
            [s["rate"] for s in steps], [s["p99_ms"] or np.nan for s in steps], "o-", label="p99"
        )
        ax.plot(
            [s["rate"] for s in steps], [s["p50_ms"] or np.nan for s in steps], "o-", label="p50"
        )
        ax.axhline(P99_LIMIT_S * 1e3, color="grey", ls="--")
        ax.set_xlabel("offered QPS (open loop)")
        ax.set_ylabel("ms")
        ax.set_title(f"{key}: capacity {results['throughput'][key]['capacity_qps']} QPS")
        ax.legend()
    fig.suptitle(title)
    return fig


IDLE_S = 20.0  # the server's idle CPU is measured this long after the runs
CAPACITY_TARGET = 300  # QPS at p99 < 100 ms, one release (the issue's)
OVERLOAD_P99_MS, SHED_P50_MS = 200.0, 20.0  # at 3x capacity: accepted p99, 503 p50


def capacity_runs(server: Server, reqs: list[dict[str, Any]], seconds: float,
                  runs: int) -> dict[str, Any]:  # fmt: skip
    """Capacity of the live release, then 3x that rate, ``runs`` times over, with the CPU the
    load generator (this process) and the server's tree each used per step (``accounted``)."""
    tree = TreeCPU(server.proc.pid)
    out: list[dict[str, Any]] = []
    for run in range(runs):
        cap = capacity(server.url, reqs, seconds, tree)
        over = overload(server.url, reqs, float(cap["capacity_qps"] or RATES[0]), seconds, tree)
        out.append({"capacity": cap, "overload": over})
        print("run", run, cap["capacity_qps"], over["at_3x"], flush=True)
    # What the server's tree burns with no requests (Ray's GCS, raylet, agents, the Serve
    # controller's polling), measured warm (after the runs: a fresh server is still reading
    # its ranking features): the rest of its CPU at a step is the requests'.
    t0, idle0 = time.perf_counter(), tree.seconds()
    time.sleep(IDLE_S)
    idle = (tree.seconds() - idle0) / (time.perf_counter() - t0)
    caps = [r["capacity"]["capacity_qps"] or 0 for r in out]
    heavy = [r["overload"]["at_3x"] for r in out]
    at_cap = [next(s for s in r["capacity"]["steps"] if s["rate"] == c) if c else None
              for r, c in zip(out, caps, strict=True)]  # fmt: skip
    # The requests' own CPU per answered request at capacity (the tree's idle burn taken off).
    per_req = [(s["server_cpu_cores"] - idle) * 1e3 / s["answered_qps"] for s in at_cap
               if s and s["answered_qps"]]  # fmt: skip
    return {
        "server_idle_cpu_cores": round(idle, 3),
        "request_cpu_ms_at_capacity": [round(v, 2) for v in per_req],
        "runs": out,
        "capacity_qps": caps,
        "capacity_spread": {"min": min(caps), "median": statistics.median(caps),
                            "max": max(caps)},
        "at_capacity": [{k: s[k] for k in ("p50_ms", "p99_ms", "generator_cpu_cores",
                                            "server_cpu_cores", "server_cpu_ms_per_ok")}
                        if s else None for s in at_cap],
        # What two cores would serve with the generator's measured CPU and the server's idle
        # burn taken off, were every cycle busy (a ceiling, not a capacity: p99 < 100 ms
        # needs headroom): 2000 ms of CPU a second over the requests' CPU ms each.
        "server_only_ceiling_qps": [round(2000 / v, 1) for v in per_req if v > 0],
        "overload_accepted_p99_ms": [h["p99_ms"] for h in heavy],
        "overload_shed_p50_ms": [h["shed_p50_ms"] for h in heavy],
        "targets": {
            "capacity_300_qps": f"{sum(c >= CAPACITY_TARGET for c in caps)}/{runs}",
            "overload_p99_200ms": f"{sum((h['p99_ms'] or 1e9) <= OVERLOAD_P99_MS for h in heavy)}"
                                  f"/{runs}",
            "shed_p50_20ms": f"{sum((h['shed_p50_ms'] or 0) <= SHED_P50_MS for h in heavy)}/{runs}",
        },
    }  # fmt: skip


def plot_capacity(results: dict[str, Any]) -> Any:
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.5))
    for i, run in enumerate(results["runs"]):
        steps = run["capacity"]["steps"]
        ax.plot([s["rate"] for s in steps], [s["p99_ms"] or np.nan for s in steps], "o-",
                label=f"run {i}: p99 (capacity {run['capacity']['capacity_qps']})")  # fmt: skip
    ax.axhline(P99_LIMIT_S * 1e3, color="grey", ls="--")
    ax.set_xlabel("offered QPS (open loop)")
    ax.set_ylabel("p99 ms")
    ax.set_yscale("log")
    ax.set_title("one release: p99 vs offered rate, three runs")
    ax.legend(fontsize=8)
    xs = np.arange(len(results["runs"]))
    bx.bar(xs - 0.2, results["overload_accepted_p99_ms"], 0.4, label="accepted p99 ms")
    bx.bar(xs + 0.2, [v or 0 for v in results["overload_shed_p50_ms"]], 0.4,
           label="503 p50 ms")  # fmt: skip
    bx.axhline(OVERLOAD_P99_MS, color="C0", ls="--", lw=1)
    bx.axhline(SHED_P50_MS, color="C1", ls="--", lw=1)
    bx.set_xticks(xs, [f"run {i}" for i in xs])
    bx.set_title("at 3x capacity")
    bx.legend(fontsize=8)
    return fig


def main(
    workspace: Annotated[Path, typer.Option(help="a workspace with a live release")] = Path(
        "var/demo"
    ),
    requests: Annotated[int, typer.Option(help="sequential requests per retrieval")] = 300,
    seconds: Annotated[float, typer.Option(help="seconds per open-loop step")] = 8.0,
    port: Annotated[int, typer.Option(help="HTTP port of the server")] = 8137,
    app_args: Annotated[
        str, typer.Option(help="AppArgs fields of the server, e.g. '{\"ingress_replicas\": 2}'")
    ] = "{}",
    name: Annotated[str, typer.Option(help="results/<name>.json, .png")] = NAME,
    overhead_only: Annotated[
        bool, typer.Option(help="only the HTTP vs in-process overhead (results/<name>_overhead)")
    ] = False,
    capacity_only: Annotated[
        int, typer.Option(help="N > 0: only capacity + 3x overload, N runs (<name>_capacity)")
    ] = 0,
) -> None:
    """Measure serving over HTTP and write results/serve_load.{json,png}."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    workspace = workspace.resolve()
    releases = second_release(workspace)
    from ebr.config import Workspace
    from ebr.release.record import read_release

    slots = {r: read_release(Workspace(workspace), r).slot.name for r in releases}
    members = pd.read_parquet(workspace / "data" / "members.parquet")["member_id"].tolist()
    members = [int(m) for m in members[:2000]]
    reqs = bodies(members, 5000)
    server = Server(workspace, port, app_args)
    results: dict[str, Any] = {"releases": list(releases)}
    try:
        if capacity_only:
            results.update(capacity_runs(server, reqs, seconds, capacity_only))
            params = {"workspace": str(workspace), "seconds_per_step": seconds, "rates": RATES,
                      "runs": capacity_only, "app_args": json.loads(app_args),
                      "requests": "query + member (signed in), the server's default retrieval",
                      "cpu_accounting": "generator_cpu_cores: this process's CPU (load "
                      "generator, shares the 2 cores) per step; server_cpu_cores: the server's "
                      "process tree; server_idle_cpu_cores: the tree with no requests; "
                      "request_cpu_ms_at_capacity: (server cores - idle) / answered QPS; "
                      "server_only_ceiling_qps: 2000 / that"}  # fmt: skip
            print(write_result(f"{name}_capacity", 2, params, results))
            print(save_figure(plot_capacity(results), f"{name}_capacity"))
            return
        results["overhead"] = overhead(server, workspace, members, requests)
        if overhead_only:
            name = f"{name}_overhead"
            return
        one = capacity(server.url, reqs, seconds)
        server.admin("POST", "/admin/experiments", {"name": "serve-load", "arms": [
            {"arm": "a", "release": releases[0], "weight": 0.5},
            {"arm": "b", "release": releases[1], "weight": 0.5}]})  # fmt: skip
        two = capacity(server.url, reqs, seconds)
        server.admin("DELETE", "/admin/experiments")
        results["throughput"] = {"one_release": one, "two_releases": two}
        cap = float(one["capacity_qps"] or RATES[0])
        results["switch"] = switch(server, reqs, 0.6 * cap, 3 * seconds, releases, slots)
        print("switch", results["switch"], flush=True)
        results["overload"] = overload(server.url, reqs, cap, seconds)
        print("overload", results["overload"], flush=True)
        results["metrics_sample"] = server.client.get("/metrics").text[:4000]
    finally:
        server.stop()
        if overhead_only:
            params = {"workspace": str(workspace), "requests": requests,
                      "target_ratio": TARGET_RATIO, "app_args": json.loads(app_args)}  # fmt: skip
            print(write_result(name, 1, params, results))
            print(save_figure(plot_overhead(plt_axes(), results), name))
    params = {"workspace": str(workspace), "requests": requests, "seconds_per_step": seconds,
              "rates": RATES, "p99_limit_ms": P99_LIMIT_S * 1e3,
              "target_ratio": TARGET_RATIO, "app_args": json.loads(app_args)}  # fmt: skip
    print(write_result(name, 1, params, results))
    print(save_figure(plot(results, f"serving releases over HTTP ({workspace.name})"), name))


if __name__ == "__main__":
    typer.run(main)
