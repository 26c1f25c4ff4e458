"""Feast online reads on the three online stores: the embedded sqlite file, one Redis, and a
3-node Redis Cluster (all on loopback), at 1 and 100 entities.

    python -m benchmarks.online_store [--members 20000] [--reads 300]

Builds one synthetic workspace (the marketplace generator's member profiles, random unit
embeddings of the catalogue and the members, dim 64) under var/bench-online, publishes it with
each config (``feature_repo.store.publish``: the same registry, three online stores), then
reads round robin, the stores taking turns within each round so a noisy moment hits all three:
the member profiles of 1 and of 100 members, member embeddings of 1 and 100, job embeddings of
100 (what a request and a ranking pass read). p50/p99 per store and read, and each store's p50
as a ratio of sqlite's in the same run. Starts its own Redis and Redis Cluster and stops them
by PID. Writes benchmarks/results/online_store.json and online_store.png.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer

from benchmarks.common import REPO_ROOT, pyplot, save_figure, write_result

NAME = "online_store"
ROOT = REPO_ROOT / "var" / "bench-online"
DIM = 64
STORES = {
    "sqlite": "feature_store.yaml",
    "redis": "feature_store.redis.yaml",
    "redis_cluster": "feature_store.redis_cluster.yaml",
}


def workspace(members: int) -> tuple[Path, list[int], list[int]]:
    """A workspace of ``members`` profiles and their embeddings plus a catalogue's."""
    from ebr.config import DataConfig
    from ebr.data.marketplace import write_marketplace

    root = ROOT / "ws"
    shutil.rmtree(root, ignore_errors=True)
    write_marketplace(DataConfig(n_jobs=members), root / "data")
    profiles = pd.read_parquet(root / "data" / "members.parquet")
    jobs = pd.read_parquet(root / "data" / "jobs.parquet")
    rng = np.random.default_rng(0)
    (root / "embeddings" / "v1").mkdir(parents=True)
    for name, key, ids in (("jobs", "job_id", jobs["job_id"]),
                           ("members", "member_id", profiles["member_id"])):  # fmt: skip
        vecs = rng.standard_normal((len(ids), DIM)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        pd.DataFrame({key: ids.to_numpy(np.int64), "embedding": list(vecs), "model_version": "v1",
                      "event_timestamp": pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=5)}
                     ).to_parquet(root / "embeddings" / "v1" / f"{name}.parquet")  # fmt: skip
    return root, [int(m) for m in profiles["member_id"]], [int(j) for j in jobs["job_id"]]


def used_memory(ports: list[int]) -> int:
    """Bytes Redis says its data takes (INFO memory: used_memory), summed over ``ports``."""
    import redis

    return sum(int(redis.Redis(port=p).info("memory")["used_memory"]) for p in ports)


def main(
    members: Annotated[int, typer.Option(help="catalogue size (members scale with it)")] = 20_000,
    reads: Annotated[int, typer.Option(help="timed reads per store and read kind")] = 300,
) -> None:
    from feature_repo import store as fs
    from feature_repo.redis_cluster import RedisCluster
    from pipelines.streaming.broker import RedisServer

    root, member_ids, job_ids = workspace(members)
    redis, cluster = RedisServer(ROOT / "redis"), RedisCluster(ROOT / "cluster")
    results: dict[str, Any] = {}
    try:
        cluster.start()
        os.environ["REDIS_CONNECTION_STRING"] = f"127.0.0.1:{redis.port}"
        os.environ["REDIS_CLUSTER_NODES"] = cluster.nodes
        stores, publish_s = {}, {}
        base = used_memory([redis.port])
        for kind, config in STORES.items():
            t0 = time.perf_counter()
            fs.publish(root, "v1", config_name=config)
            publish_s[kind] = round(time.perf_counter() - t0, 2)
            stores[kind] = fs.open_store(root / "feature_repo", config)
        # What the online store holds per entity (the capacity plan's arithmetic): Redis's
        # own memory accounting after the publish, over the entities published.
        entities = len(member_ids) + len(job_ids)
        results["redis_bytes_per_entity"] = round((used_memory([redis.port]) - base) / entities)
        results["redis_cluster_bytes_per_entity"] = round(used_memory(cluster.ports) / entities)
        results["sqlite_bytes_per_entity"] = round(
            (root / "feature_repo" / "data" / "online.db").stat().st_size / entities
        )
        rng = random.Random(3)
        reads_of: dict[str, Callable[[Any], object]] = {
            "profiles_1": lambda s: fs.member_profiles(s, rng.sample(member_ids, 1)),
            "profiles_100": lambda s: fs.member_profiles(s, rng.sample(member_ids, 100)),
            "member_embeddings_1": lambda s: fs.member_embeddings(s, rng.sample(member_ids, 1), "v1"),  # noqa: E501
            "member_embeddings_100": lambda s: fs.member_embeddings(s, rng.sample(member_ids, 100), "v1"),  # noqa: E501
            "job_embeddings_100": lambda s: fs.job_embeddings(s, rng.sample(job_ids, 100), "v1"),
        }  # fmt: skip
        # Every read answers: the stores hold what was published (checked once, untimed).
        for kind, store in stores.items():
            got = fs.member_embeddings(store, member_ids[:5], "v1")
            assert all(v is not None for v in got.values()), f"{kind}: published rows missing"
        times: dict[str, dict[str, list[float]]] = {k: {r: [] for r in reads_of} for k in stores}
        for i in range(reads + 20):  # the first 20 rounds warm up
            for read, fn in reads_of.items():
                order = list(stores.items())
                rng.shuffle(order)
                for kind, store in order:
                    t0 = time.perf_counter()
                    fn(store)
                    if i >= 20:
                        times[kind][read].append((time.perf_counter() - t0) * 1e3)
        for kind in stores:
            results[kind] = {
                read: {"p50_ms": round(float(np.percentile(v, 50)), 3),
                       "p99_ms": round(float(np.percentile(v, 99)), 3),
                       "p50_vs_sqlite": round(float(np.percentile(v, 50) / np.percentile(
                           times["sqlite"][read], 50)), 2)}
                for read, v in times[kind].items()
            }  # fmt: skip
            results[kind]["publish_s"] = publish_s[kind]
            print(kind, results[kind], flush=True)
    finally:
        cluster.stop()
        redis.stop()
    params = {"members": len(member_ids), "jobs": len(job_ids), "dim": DIM, "reads": reads,
              "cluster_nodes": 3, "client": "feast 0.67 online read (redis-py)"}  # fmt: skip
    write_result(NAME, 1, params, results)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    read_names = list(reads_of)
    for i, kind in enumerate(STORES):
        ax.bar(np.arange(len(read_names)) + (i - 1) * 0.27,
               [results[kind][r]["p50_ms"] for r in read_names], 0.27, label=kind)  # fmt: skip
    ax.set_xticks(np.arange(len(read_names)), read_names, rotation=15)
    ax.set_ylabel("p50 ms (one read)")
    ax.set_title(
        f"Feast online reads: sqlite vs Redis vs 3-node Redis Cluster ({len(member_ids)} members)"
    )  # noqa: E501
    ax.legend()
    save_figure(fig, NAME)


if __name__ == "__main__":
    typer.run(main)
