"""The streaming part of the demo: post a job on the event stream, time how long until the
running Serve app returns it, then send live marketplace traffic for a few seconds.

python scripts/stream_demo.py --workspace var/demo --url http://127.0.0.1:8000
(the streaming job must be running: pyflyte run workflows/streaming.py start_streaming ...)
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd
import typer

from ebr.config import Workspace
from ebr.stream.events import encode
from pipelines.streaming.broker import Broker
from pipelines.streaming.job import status
from pipelines.streaming.produce import produce_live


def main(
    workspace: Path = Path("var/demo"),
    url: str = "http://127.0.0.1:8000",
    seconds: float = 10.0,
    rate: float = 20.0,
) -> None:
    handle = status(Workspace(workspace))
    if not handle["running"]:
        raise typer.BadParameter(f"no streaming job runs over {workspace}: start it first")
    broker = Broker(handle["redis_url"], "demo")
    job = pd.read_parquet(workspace / "data" / "jobs.parquet").iloc[0].to_dict()
    new_id = int(time.time())  # above the catalogue's ids
    posted = job | {"job_id": new_id, "title": "Underwater welder", "active": True}
    body = {"query": "underwater welder", "k": 5, "filter": {"term": {"country": [job["country"]]}}}
    t0 = time.monotonic()
    broker.produce(encode("job_posted", new_id, datetime.now(UTC), posted))
    with httpx.Client(base_url=url, timeout=30) as client:
        while True:
            hits = client.post("/v1/search", json=body).json().get("results", [])
            if any(h["job_id"] == new_id for h in hits):
                break
            if time.monotonic() - t0 > 60:
                raise SystemExit("the posted job was not served within 60 s (see the job's log)")
            time.sleep(0.05)
        took = time.monotonic() - t0
        print(f"posted job {new_id} 'Underwater welder' ({job['country']}): searchable after "
              f"{took:.2f} s")  # fmt: skip
        print(json.dumps(hits[0], indent=1, default=str)[:600])
    sent = produce_live(broker, workspace, rate, seconds)
    print(f"sent {len(sent)} live traffic events ({rate:g}/s for {seconds:g} s); dead letters "
          f"so far: {broker.client.xlen(broker.dead)}")  # fmt: skip


if __name__ == "__main__":
    typer.run(main)
