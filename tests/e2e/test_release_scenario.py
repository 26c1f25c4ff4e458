"""LinkedIn's embedding-versioning scenario, end to end: a real Flyte local run, real Feast, a
real Ray Serve app over HTTP (``python -m serving.app`` in its own process), under load.

1. Release N (model v1, co-trained with member-interest v1) is live (``build_platform``).
2. Member-interest model v2 is trained (the Flyte task, run locally).
3. N's request tower paired with interest v2 is refused at provision time (the lineage gate).
4. ``provision_release`` (``pyflyte run``) builds N+1: model v2 co-trained with interest v2,
   its own Feast views and slot; N keeps serving.
5. While a load generator sends requests: N and N+1 serve side by side in an experiment,
   N+1 is promoted, the experiment stops, N is rolled back to; 0 failed requests, 0
   responses whose release differs from what their arm says, arms sticky per member.
6. A forged record pairing N's tower with interest v2 (checksum recomputed, pointer moved by
   hand, bypassing every check) is refused at serve time: a 503 naming the reason, counted
   on /metrics, never an answer.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from ebr.config import TrainConfig, Workspace
from ebr.release import state as st
from ebr.release.gates import ReleaseRefused
from ebr.release.provision import provision
from ebr.release.record import new_release_id, read_record, read_release, write_record
from feature_repo.store import copy_workspace
from tests.conftest import REPO
from tests.serving_process import Server

pytestmark = pytest.mark.slow
TOKEN = "scenario-admin-token"


def _provision_v2(ws: Workspace) -> str:
    """``pyflyte run workflows/releases.py provision_release``: the candidate's id."""
    config = {"workspace": str(ws.root), "version": "v2", "train_model": True,
              "interest_version": "v2", "train": {"epochs": 3}}  # fmt: skip
    cmd = [str(Path(sys.executable).with_name("pyflyte")), "run", "workflows/releases.py",
           "provision_release", "--config", json.dumps(config)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    state = st.read_state(ws)
    (rid,) = [r for r, e in state["releases"].items() if e["version"] == "v2"]
    assert state["releases"][rid]["state"] == "candidate" and rid in proc.stdout
    return rid


class Load:
    """Threads sending searches (members, anonymous with and without a request key) and
    JYMBII feeds until stopped; every response kept."""

    def __init__(self, client: httpx.Client, members: list[int], threads: int = 3) -> None:
        self.client, self.members, self.seen = client, members, []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            member, kind = rng.choice(self.members), rng.random()
            if kind < 0.5:
                req = ("member", member, {"query": "engineer", "member_id": member, "k": 5})
            elif kind < 0.7:
                req = ("key", member, {"query": "nurse", "request_key": f"cookie-{member}", "k": 5})
            elif kind < 0.85:
                req = ("anonymous", None, {"query": "sales manager", "k": 5})
            else:
                req = ("jymbii", member, None)
            if req[2] is None:
                resp = self.client.get(f"/v1/members/{member}/recommendations", params={"k": 5})
            else:
                resp = self.client.post("/v1/search", json=req[2])
            body = (
                resp.json()
                if resp.headers.get("content-type", "").startswith("application/json")
                else {}
            )
            with self._lock:
                self.seen.append((time.monotonic(), req[0], req[1], resp.status_code, body))

    def wait_for(self, what: str, test: Callable[[str, dict[str, Any]], bool], n: int = 10) -> None:
        """Wait (deadline: the load is slow on a busy machine, never a fixed phase) until ``n``
        responses sent from now on pass ``test(kind, body)``."""
        with self._lock:
            start = len(self.seen)
        deadline = time.monotonic() + 300
        while True:
            with self._lock:
                got = sum(test(kind, body) for _, kind, _, status, body in self.seen[start:]
                          if status == 200)  # fmt: skip
                failed = [x[3] for x in self.seen[start:] if x[3] != 200]
            if got >= n or failed:
                return  # failures are asserted on the whole record afterwards
            assert time.monotonic() < deadline, f"{what}: {got} of {n} responses in 300 s"
            time.sleep(0.2)

    def stop(self) -> list[tuple[float, str, int | None, int, dict[str, Any]]]:
        self._stop.set()
        for t in self._threads:
            t.join()
        return list(self.seen)


def test_release_n_and_n_plus_1_serve_side_by_side_promote_and_roll_back(
    platform_ws: Path, tmp_path: Path
) -> None:
    from tasks.platform import train_member_interest

    ws = copy_workspace(platform_ws, tmp_path / "ws")
    n = st.read_state(ws)["live"]
    assert read_release(ws, n).interest_version == "v1"

    # 2. Member-interest model v2 (a Flyte task, run locally).
    train_member_interest(
        workspace=str(ws.root), data_dir=str(ws.data), interest_version="v2",
        train=TrainConfig(epochs=2),
    )  # fmt: skip
    # 3. N's request tower with interest v2 is refused at provision time.
    listed = ws.feature_repo / "versions.json"
    original = listed.read_text()
    listed.write_text(json.dumps({"versions": [{"version": "v1", "interest_version": "v2"}]}))
    with pytest.raises(
        ReleaseRefused, match="lineage gate: Feast serves v1 with member interest v2"
    ):
        provision(ws, "v1")
    listed.write_text(original)
    # 4. N+1: model v2 co-trained with interest v2, beside N.
    n1 = _provision_v2(ws)
    record = read_record(ws, n1)
    assert record["member_interest"]["version"] == "v2" and record["parent"] == n
    assert "member_interest_v2" in record["features"]["views"]
    assert st.read_state(ws)["live"] == n

    server = Server(ws, TOKEN)
    try:
        members = pd.read_parquet(ws.data / "members.parquet")["member_id"].head(200).tolist()
        load = Load(server.client, [int(m) for m in members])
        # Each step waits for the responses that show it took effect, under load.
        load.wait_for("N live", lambda kind, b: b.get("release") == n)
        arms = {"control": n, "treatment": n1}
        server.admin("POST", "/admin/experiments", {"name": "v2-vs-v1", "arms": [
            {"arm": "control", "release": n, "weight": 0.5},
            {"arm": "treatment", "release": n1, "weight": 0.5}]})  # fmt: skip
        for arm in arms:
            load.wait_for(f"experiment arm {arm}", lambda kind, b, a=arm: b.get("arm") == a)
        assert server.admin("POST", "/admin/promote", {"release": n1})["release"] == n1
        phase = "N+1 live outside the experiment"
        load.wait_for(phase, lambda kind, b: b.get("arm") is None and b.get("release") == n1)
        server.admin("DELETE", "/admin/experiments")
        load.wait_for("experiment stopped",
                      lambda kind, b: kind == "member" and b.get("arm") is None)  # fmt: skip
        assert server.admin("POST", "/admin/rollback", {})["release"] == n
        load.wait_for("rolled back to N", lambda kind, b: b.get("release") == n)
        seen = load.stop()
        metrics = server.client.get("/metrics").text

        # 0 failures; 0 responses whose release is not what their arm says.
        assert len(seen) >= 60  # at least what the waits above counted
        failed = [(kind, status, body) for _, kind, _, status, body in seen if status != 200]
        assert not failed, failed[:5]
        mixed = [b for *_, b in seen if b["arm"] is not None and b["release"] != arms[b["arm"]]]
        assert not mixed, mixed[:3]
        assert {b["release"] for *_, b in seen} == {n, n1}
        # Sticky: a member (or request key) keeps its arm for the whole experiment.
        arm_of: dict[tuple[str, int | None], set[str]] = defaultdict(set)
        for _, kind, unit, _, body in seen:
            if body["arm"] is not None:
                arm_of[(kind == "key" and "key" or "member", unit)].add(body["arm"])
        assert arm_of and all(len(a) == 1 for a in arm_of.values())
        assert {a for s in arm_of.values() for a in s} == {"control", "treatment"}
        # Requests outside the experiment followed live: N, then N+1, then N again.
        outside = [b["release"] for *_, b in seen if b["arm"] is None]
        changes = [r for i, r in enumerate(outside) if i == 0 or outside[i - 1] != r]
        assert changes[0] == n and n1 in changes and changes[-1] == n, changes
        assert f'arm="treatment",release="{n1}"' in metrics and 'arm="control"' in metrics

        # 6. A forged record (N's tower, interest v2) is refused at serve time.
        forged = {**read_record(ws, n), "id": new_release_id("v1")}
        forged["member_interest"] = record["member_interest"]
        forged = {k: v for k, v in forged.items() if k not in ("checksum", "format_version")}
        write_record(ws, forged)
        st.add_candidate(ws, forged["id"])
        st.promote(ws, forged["id"])  # by hand: no gate, no check
        server.admin("POST", "/admin/reload")
        resp = server.client.post("/v1/search", json={"query": "engineer", "k": 3})
        assert resp.status_code == 503, resp.text
        assert "co-trained with member interest v1, but the release names v2" in resp.text
        assert (
            f'reason="release_unavailable",release="{forged["id"]}"'
            in server.client.get("/metrics").text
        )
        # Admin calls check too: promoting the forged release through the API is refused.
        bad = server.client.post("/admin/promote", json={"release": forged["id"]},
                                 headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        assert bad.status_code in (409, 503) and "interest" in bad.text
        wrong = server.client.post("/admin/reload", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
    finally:
        server.stop()
