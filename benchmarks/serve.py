"""Serving benchmark: /v1/search latency and served-EBR vs BM25 recall@100, in one run.

    python -m benchmarks.serve --workspace var/demo        # a workspace built by `make demo`

Starts the real Ray Serve app on loopback over the workspace, then:
- latency: ``--requests`` (200) sequential POST /v1/search calls (query + member, k=10), p50/p95
  client-side, plus the server's own took_ms, for each retrieval (ebr, term, hybrid); the same
  for JYMBII recommendations;
- quality: every held-out search session (query + member, later days of the log) through
  POST /v1/search with k=100 in each retrieval, recall@100 next to BM25 (the slot's term
  index) on the same jobs and queries, and exact search with the same model (what the ANN
  slot costs in recall).
Writes benchmarks/results/serve.json and serve.png.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import typer

from benchmarks.common import REPO_ROOT, pyplot, save_figure, write_result
from ebr.net import free_port

RETRIEVALS = ("ebr", "term", "hybrid")  # ebr.index.query.search.RETRIEVALS
DEFAULT = "hybrid"  # serving.schemas.AppArgs.retrieval


def _start(workspace: Path) -> tuple[Any, str]:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import httpx
    import ray
    from ray import serve

    from serving.app import APP_NAME, build_app

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}},
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"workspace": str(workspace)}), name=APP_NAME, blocking=False)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if client.get("/healthz").status_code == 200:
                return client, f"http://127.0.0.1:{port}"
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the Serve app did not become healthy within 180 s")


def _latencies(client: Any, calls: list[tuple[str, str, dict | None]]) -> dict[str, Any]:
    wall, server = [], []
    for method, path, body in calls:
        t0 = time.perf_counter()
        r = client.request(method, path, json=body)
        wall.append((time.perf_counter() - t0) * 1000)
        r.raise_for_status()
        server.append(r.json()["took_ms"])
    w = np.array(wall)
    return {
        "requests": len(calls),
        "p50_ms": round(float(np.percentile(w, 50)), 2),
        "p95_ms": round(float(np.percentile(w, 95)), 2),
        "p99_ms": round(float(np.percentile(w, 99)), 2),
        "server_took_p50_ms": round(float(np.percentile(server, 50)), 2),
        "samples_ms": [round(x, 2) for x in wall],
    }


def _quality(client: Any, workspace: Path, k: int) -> dict[str, Any]:
    from ebr.config import TrainConfig
    from ebr.data.pairs import eval_searches, time_split
    from ebr.eval.bm25 import BM25Baseline
    from ebr.metrics import exact_topk, recall_at_k
    from ebr.model.artifact import load_request_tower
    from ebr.model.features import member_records
    from ebr.model.infer import encode_requests
    from ebr.release.slots import load_embeddings
    from ebr.versions import interest_version

    jobs = pd.read_parquet(workspace / "data" / "jobs.parquet")
    members = pd.read_parquet(workspace / "data" / "members.parquet")
    _, held = time_split(
        pd.read_parquet(workspace / "data" / "impressions.parquet"), TrainConfig().eval_days
    )
    ev = eval_searches(held, with_query=True)
    positives = ev["positives"].tolist()
    served: dict[str, list[list[int]]] = {mode: [] for mode in RETRIEVALS}
    for q, m in zip(ev["query"], ev["member_id"], strict=True):
        for mode in RETRIEVALS:
            body = {"query": q, "member_id": int(m), "k": k, "retrieval": mode}
            r = client.post("/v1/search", json=body)
            r.raise_for_status()
            ids = [h["job_id"] for h in r.json()["results"]]
            served[mode].append(ids + [-1] * (k - len(ids)))
    version = client.get("/healthz").json()["model_version"]
    tower, cfg, meta = load_request_tower(workspace / "models" / version)
    recs = member_records(members)
    iv = interest_version(meta)
    if iv is not None:  # the same looked-up interest vectors the encoder reads from Feast
        table = workspace / "interest" / "embeddings" / iv / "members.parquet"
        mids, ivecs = load_embeddings(table, "member_id", iv)
        for mid, vec in zip(mids, ivecs, strict=True):
            recs[int(mid)] = {**recs[int(mid)], "interest": vec}
    # Exact search on the inputs the served encoder sees (request time = now), so the gap
    # between the two is the ANN index's alone.
    now = [pd.Timestamp.now(tz="UTC")] * len(ev)
    qv = encode_requests(
        tower, ev["query"].tolist(), [recs[int(m)] for m in ev["member_id"]], cfg, whens=now
    )
    ids, vecs = load_embeddings(
        workspace / "embeddings" / version / "jobs.parquet", "job_id", version
    )
    bm25 = BM25Baseline(jobs).search(ev["query"].tolist(), k)
    return {
        "held_out_searches": len(ev),
        **{
            f"served_{mode}_recall@{k}": round(recall_at_k(np.array(ids), positives, k), 4)
            for mode, ids in served.items()
        },
        f"exact_ebr_recall@{k}": round(
            recall_at_k(exact_topk(vecs, qv, k, ids)[1], positives, k), 4
        ),
        f"bm25_recall@{k}": round(recall_at_k(bm25, positives, k), 4),
    }


def main(workspace: Path = Path("var/demo"), requests: int = 200, k: int = 100) -> None:
    """Benchmark the Serve app over ``workspace`` (build one first with `make demo`)."""
    if not (workspace / "releases" / "state.json").exists():
        raise typer.BadParameter(f"{workspace} has no release: run `make demo` first")
    client, url = _start(workspace)
    try:
        jobs = pd.read_parquet(workspace / "data" / "jobs.parquet", columns=["title"])
        members = pd.read_parquet(workspace / "data" / "members.parquet", columns=["member_id"])
        rng = np.random.default_rng(0)
        titles = jobs["title"].sample(requests, replace=True, random_state=0).str.lower().tolist()
        mids = rng.choice(members["member_id"].to_numpy(), requests)

        def search(mode: str) -> list[tuple[str, str, dict | None]]:
            return [
                (
                    "POST",
                    "/v1/search",
                    {"query": t, "member_id": int(m), "k": 10, "retrieval": mode},
                )
                for t, m in zip(titles, mids, strict=True)
            ]

        jymbii = [("GET", f"/v1/members/{int(m)}/recommendations?k=10", None) for m in mids]
        for mode in RETRIEVALS:  # warm-up: first calls pay lazy imports and caches
            _latencies(client, search(mode)[:20])
        results = {
            "search": _latencies(client, search(DEFAULT)),
            "search_by_retrieval": {m: _latencies(client, search(m)) for m in RETRIEVALS},
            "recommendations": _latencies(client, jymbii),
            "quality": _quality(client, workspace, k),
        }
    finally:
        from ray import serve

        serve.shutdown()
    n_jobs = len(jobs)
    path = write_result(
        "serve",
        2,
        {"workspace": str(workspace), "n_jobs": n_jobs, "url": url, "requests": requests, "k": k},
        results,
    )
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    shown = {f"search {m}": results["search_by_retrieval"][m] for m in RETRIEVALS}
    for name, r in {**shown, "recommendations": results["recommendations"]}.items():
        a.hist(r["samples_ms"], bins=40, alpha=0.5, label=f"{name} (p50 {r['p50_ms']} ms)")
    a.set(
        xlabel="latency per sequential request (ms)",
        ylabel="requests",
        title=f"Ray Serve on loopback, {n_jobs} jobs",
    )
    a.legend()
    q = results["quality"]
    names = [n for n in q if n.endswith(f"@{k}")]
    b.bar([n.replace(f"_recall@{k}", "") for n in names], [q[n] for n in names])
    b.set(ylabel=f"recall@{k}", ylim=(0, 1), title=f"{q['held_out_searches']} held-out searches")
    save_figure(fig, "serve")
    latency = {f"search {m}": r for m, r in results["search_by_retrieval"].items()}
    latency["recommendations"] = results["recommendations"]
    print(path, {n: {f: v for f, v in r.items() if f != "samples_ms"} for n, r in latency.items()})
    print(results["quality"])


if __name__ == "__main__":
    typer.run(main)
