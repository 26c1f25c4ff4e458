"""Streaming freshness end to end: Redis, the Beam streaming job and the Serve app
(``python -m serving.app``) each in their own process over one workspace.

- every job posted on the stream is returned by ``/v1/search`` with a filter (waited for with
  a deadline; how fast is ``python -m benchmarks.stream``'s freshness, not a test's bound);
- a member's profile change reaches their next request (JYMBII feed changes);
- a retriever replica killed with SIGKILL comes back, replays its slot's log and returns the
  same results.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from ebr.config import Workspace
from ebr.stream.events import encode
from pipelines.streaming.broker import Broker, RedisServer
from tests.pipelines.streaming import (
    StreamJob,
    copy_workspace,
    job_record,
    now,
    profile_record,
    wait_drained,
)
from tests.serving_process import Server

pytestmark = pytest.mark.slow
POSTINGS = 12
RECOVER_S = 120.0
# The replica holding the releases' encoders and indexes (release_server: ingress, the default).
REPLICA = "ServeReplica:ebr:Ingress"


@pytest.fixture
def stack(platform_ws: Path, tmp_path: Path) -> Iterator[tuple[Path, Broker, StreamJob, Server]]:
    ws = copy_workspace(platform_ws, tmp_path / "ws")
    redis_server = RedisServer(tmp_path / "redis")
    job = StreamJob(ws, redis_server.url, tmp_path / "stream.log")
    server = Server(Workspace(ws))
    try:
        yield ws, Broker(redis_server.url, "producer"), job, server
    finally:
        server.stop()
        job.stop()
        redis_server.stop()


def _search(server: Server, body: dict[str, Any]) -> dict[str, Any]:
    resp = server.client.post("/v1/search", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _ids(doc: dict[str, Any]) -> list[int]:
    return [int(h["job_id"]) for h in doc["results"]]


def test_streamed_jobs_and_profiles_are_served(
    stack: tuple[Path, Broker, StreamJob, Server],
) -> None:
    ws, broker, job, server = stack
    jobs = pd.read_parquet(ws / "data" / "jobs.parquet")
    members = pd.read_parquet(ws / "data" / "members.parquet")
    template = int(jobs["job_id"].iloc[0])
    country = str(jobs["country"].iloc[0])
    # Warm: the job has loaded its models and the server its release before the clock runs.
    broker.produce(encode("job_updated", template, now(), job_record(jobs, template)))
    wait_drained(broker.client, job)
    _search(server, {"query": "warm", "k": 5})

    for i in range(POSTINGS):
        jid, title = 4_000_000 + i, f"Quokka{i} wrangler"
        rec = job_record(jobs, template, job_id=jid, title=title, active=True, country=country)
        t0 = time.monotonic()
        broker.produce(encode("job_posted", jid, now(), rec))
        body = {"query": title, "k": 10, "filter": {"term": {"country": [country]}}}
        while jid not in _ids(_search(server, body)):
            assert time.monotonic() - t0 < 180, f"job {jid} not served after 180 s\n{job.output()}"
            time.sleep(0.05)

    # A profile change reaches the member's next request.
    member = int(members["member_id"].iloc[0])
    feed = f"/v1/members/{member}/recommendations"
    before = server.client.get(feed, params={"k": 20}).json()
    other = profile_record(members, int(members["member_id"].iloc[-1]))
    changed = other | {"member_id": member}  # another member's whole profile
    broker.produce(encode("member_profile_updated", member, now(), changed))
    wait_drained(broker.client, job)
    after = server.client.get(feed, params={"k": 20}).json()
    assert _ids(after) != _ids(before)


def test_a_killed_serving_replica_comes_back_with_the_same_results(
    stack: tuple[Path, Broker, StreamJob, Server],
) -> None:
    ws, broker, job, server = stack
    jobs = pd.read_parquet(ws / "data" / "jobs.parquet")
    template = int(jobs["job_id"].iloc[0])
    for i in range(5):  # served from the slot's log, not its snapshot
        rec = job_record(
            jobs, template, job_id=3_000_000 + i, title=f"Axolotl{i} keeper", active=True
        )
        broker.produce(encode("job_posted", 3_000_000 + i, now(), rec))
    broker.produce(encode("job_closed", int(jobs["job_id"].iloc[1]), now()))
    wait_drained(broker.client, job)
    body = {"query": "Axolotl keeper", "k": 10, "retrieval": "term"}
    deadline = time.monotonic() + 30
    while not {3_000_000, 3_000_004} <= set(_ids(_search(server, body))):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    before = _search(server, body)["results"]

    replicas = server.processes(REPLICA)
    assert replicas, f"no {REPLICA} replica found among the server's processes"
    for pid in replicas:
        os.kill(pid, signal.SIGKILL)  # a replica this test's server started
    deadline = time.monotonic() + RECOVER_S
    while True:
        try:  # until Serve restarts it, the front may drop the killed replica's connections
            resp = server.client.post("/v1/search", json=body)
            seen = f"{resp.status_code} {resp.text[:300]}"
        except httpx.TransportError as err:
            resp, seen = None, repr(err)
        if resp is not None and resp.status_code == 200 and server.processes(REPLICA):
            break
        assert time.monotonic() < deadline, f"no recovery: {seen}"
        time.sleep(0.5)
    assert resp.json()["results"] == before
    assert set(server.processes(REPLICA)).isdisjoint(replicas)
