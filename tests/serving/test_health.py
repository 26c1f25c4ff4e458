"""Health that tells the truth, over HTTP, on a server of its own (``python -m serving.app``
on a copy of the workspace): each fault on the request path keeps requests answered where it
can, shows in ``/healthz`` with its reason (never ``ok`` while it holds) and in ``/metrics``,
and clears by itself once fixed:

- the impression log cannot write (r32): searches answer, the log degrades and recovers;
- admin calls naming an unknown or modified release (r08): 404 / 409 with the reason;
- releases/state.json goes bad in place (r27): the last good state keeps serving;
- damage in the middle of the live slot's log: reported;
- a killed replica (also seen #16): ready only once it serves what it served before.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from ebr.config import Workspace
from ebr.index.live.slot import open_live
from ebr.release import state as st
from ebr.release.impressions import read_impressions
from ebr.release.record import new_release_id, read_record, read_release, record_dir, write_record
from feature_repo.store import copy_workspace
from tests.serving_process import Server

pytestmark = pytest.mark.slow
DEADLINE_S = 120.0
REPLICA = "ServeReplica:ebr:Ingress"  # the ingress replica: it holds the releases
QUERY = {"query": "Quokkazine keeper", "k": 10, "retrieval": "term"}


def until(get: Callable[[], Any], ok: Callable[[Any], bool], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        got = get()
        if ok(got):
            return got
        assert time.monotonic() < deadline, f"{what}: last seen {got}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def served(platform_ws: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose impression log cannot write from the start: its folder is a file."""
    ws = copy_workspace(platform_ws, tmp_path_factory.mktemp("health") / "ws")
    (ws.root / "serving-log").write_text("not a folder: every impression write fails")
    server = Server(ws)
    server.ws = ws  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()


def _ws(server: Server) -> Workspace:
    return server.ws  # type: ignore[attr-defined, no-any-return]


def _health(server: Server) -> dict[str, Any]:
    try:
        resp = server.client.get("/healthz")
    except httpx.TransportError as err:
        return {"status": f"no answer: {err!r}", "problems": [], "http": None}
    return {**resp.json(), "http": resp.status_code}


def _metric(server: Server, name: str) -> float:
    lines = [ln for ln in server.client.get("/metrics").text.splitlines() if ln.startswith(name)]
    assert lines, f"{name} not in /metrics"
    return float(lines[0].split()[-1])


def test_a_failing_impression_log_degrades_health_and_never_a_search(served: Server) -> None:
    ids = []
    for query in ("nurse", "data engineer", "warehouse", "sales manager", "accountant"):
        resp = served.client.post("/v1/search", json={"query": query, "k": 3})
        assert resp.status_code == 200, resp.text  # the side log never fails the request
        ids.append(resp.json()["request_id"])
    feed = served.client.get("/v1/members/1/recommendations", params={"k": 3})
    assert feed.status_code == 200, feed.text
    ids.append(feed.json()["request_id"])
    health = until(lambda: _health(served), lambda h: h["status"] != "ok", "log degraded")
    assert health["http"] == 200 and health["status"] == "degraded", health
    assert any("impression log failing" in p for p in health["problems"]), health
    assert "serving-log" in health["impression_log"]["last_error"], health
    assert served.client.get("/livez").json()["status"] == "alive"
    assert _metric(served, "ebr_impression_log_degraded") == 1.0
    assert _metric(served, "ebr_impression_log_write_errors_total") >= 1
    (_ws(served).root / "serving-log").unlink()  # space freed, folder usable: no restart
    health = until(lambda: _health(served), lambda h: h["status"] == "ok", "log recovered")
    assert health["impression_log"]["pending"] == 0 and health["problems"] == []
    logged = until(lambda: read_impressions(_ws(served)), lambda df: len(df) >= len(ids), "log")
    assert set(ids) <= set(logged["request_id"])  # held while failing, written once it could


def _edited_candidate(ws: Workspace) -> str:
    """A candidate whose record was edited after it was written (checksum mismatch)."""
    live = st.read_state(ws)["live"]
    doc = {
        k: v for k, v in read_record(ws, live).items() if k not in ("checksum", "format_version")
    }
    doc["id"] = new_release_id("v1")
    path = write_record(ws, doc) / "release.json"
    st.add_candidate(ws, doc["id"])
    path.write_text(path.read_text().replace(doc["created_at"], "2020-01-01T00:00:00+00:00"))
    return str(doc["id"])


def _unreadable_candidate(ws: Workspace) -> str:
    rid = _edited_candidate(ws)
    (record_dir(ws, rid) / "release.json").write_text("{")
    return rid


@pytest.mark.parametrize(
    ("make", "status", "reason"),
    [
        (lambda ws: "rel-v1-20991231T235959000000", 404, "unknown release"),
        (lambda ws: "rel-v9-20991231T235959000000", 404, "unknown release"),
        (_edited_candidate, 409, "checksum"),
        (_unreadable_candidate, 409, "JSON"),
    ],
)
def test_admin_calls_naming_a_bad_release_answer_with_the_reason_and_change_nothing(
    served: Server, make: Callable[[Workspace], str], status: int, reason: str
) -> None:
    ws = _ws(served)
    rid = make(ws)
    live = st.read_state(ws)["live"]
    before = (ws.releases / st.STATE_FILE).read_bytes()
    calls = [
        ("POST", f"/admin/releases/{rid}/warm", None),
        ("POST", "/admin/promote", {"release": rid}),
        ("POST", "/admin/rollback", {"to": rid}),
        (
            "POST",
            "/admin/experiments",
            {
                "name": "bad-arm",
                "arms": [
                    {"arm": "a", "release": live, "weight": 0.5},
                    {"arm": "b", "release": rid, "weight": 0.5},
                ],
            },
        ),  # fmt: skip
    ]
    for method, path, body in calls:
        headers = {"Authorization": f"Bearer {served.token}"}
        resp = served.client.request(method, path, json=body, headers=headers)
        assert resp.status_code == status, (path, resp.status_code, resp.text)
        assert rid in resp.text and reason in resp.text, (path, resp.text)
        assert (ws.releases / st.STATE_FILE).read_bytes() == before  # nothing changed
    resp = served.client.post("/v1/search", json={"query": "nurse", "k": 3})
    assert resp.status_code == 200 and resp.json()["release"] == live
    health = _health(served)
    assert health["http"] == 200 and health["release"] == live
    assert health["releases"][live]["loads"] == 1  # failed loads never evicted the live one
    assert rid not in served.client.get("/metrics").text or status == 409


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda text: text[: len(text) // 2], "JSON"),
        (lambda text: "", "JSON"),
        (lambda text: text.replace('"format_version": 1', '"format_version": 2'), "format_version"),
        (lambda text: json.dumps({**json.loads(text), "live": None}), "no live release"),
    ],
)
def test_a_bad_state_file_is_reported_while_the_last_good_state_serves(
    served: Server, damage: Callable[[str], str], reason: str
) -> None:
    path = _ws(served).releases / st.STATE_FILE
    good = path.read_text()
    live = json.loads(good)["live"]
    path.write_text(damage(good))  # in place, as an editor or a disk fault leaves it
    try:
        health = until(
            lambda: _health(served), lambda h: h["state_file"]["status"] == "stale", "reported"
        )
        assert health["http"] == 200 and health["status"] == "degraded", health
        assert reason in health["state_file"]["reason"] and str(path) in health["problems"][-1]
        for _ in range(10):  # every request routed by the last good state
            resp = served.client.post("/v1/search", json={"query": "nurse", "member_id": 1})
            assert resp.status_code == 200 and resp.json()["release"] == live, resp.text
        reload = served.client.post(
            "/admin/reload", headers={"Authorization": f"Bearer {served.token}"}
        )
        assert reload.status_code == 409 and str(path) in reload.text, reload.text
        assert _metric(served, "ebr_release_state_file_stale") == 1.0
    finally:
        path.write_text(good)
    until(lambda: _health(served), lambda h: h["state_file"]["status"] == "good", "cleared")
    assert _metric(served, "ebr_release_state_file_stale") == 0.0


def _upsert_jobs(ws: Workspace, n: int) -> Path:
    """``n`` new jobs in the live slot's log, one frame each (a writer process's view)."""
    live = st.read_state(ws)["live"]
    slot_path = ws.slots / read_release(ws, live).slot.name
    with open_live(slot_path) as writer:
        snap = writer.snapshot
        first = 0 if "active" not in snap.items else int(np.argmax(snap.items["active"].values))
        for i in range(n):
            row = snap.items.iloc[[first]].copy()
            row["job_id"], row["title"] = 4_000_000 + i, f"Quokkazine{i} keeper"
            writer.upsert(row.reset_index(drop=True), np.asarray(snap.vectors[[first]]))
        return writer.log_dir


def _hits(server: Server) -> list[int]:
    resp = server.client.post("/v1/search", json=QUERY)
    assert resp.status_code == 200, resp.text
    return [h["job_id"] for h in resp.json()["results"]]


def test_damage_in_the_slot_log_shows_in_health(served: Server) -> None:
    log_dir = _upsert_jobs(_ws(served), 3)
    until(lambda: _hits(served), lambda ids: 4_000_002 in ids, "upserts served")
    (segment,) = sorted(log_dir.glob("*.wal"))
    data = segment.read_bytes()
    at = 40  # inside the first frame: intact frames follow, so this is damage, not a torn tail
    segment.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :])
    try:
        health = until(
            lambda: (_hits(served), _health(served))[1],  # a search tails the log first
            lambda h: any(" log: " in p for p in h["problems"]),
            "damage reported",
        )
        assert health["http"] == 200 and health["status"] == "degraded", health
        assert health["releases"][health["release"]]["log_problems"], health
    finally:
        segment.write_bytes(data)
    until(
        lambda: (_hits(served), _health(served))[1],
        lambda h: not any(" log: " in p for p in h["problems"]),
        "damage cleared once repaired",
    )


def _copy_of_live(ws: Workspace) -> str:
    """A new release serving the live release's model and slot (a valid record)."""
    kept = read_record(ws, st.read_state(ws)["live"]).items()
    doc = {k: v for k, v in kept if k not in ("checksum", "format_version")}
    doc["id"] = new_release_id("v1")
    write_record(ws, doc)
    st.add_candidate(ws, doc["id"])
    return str(doc["id"])


def test_an_experiment_over_many_releases_serves_without_reloading_them(served: Server) -> None:
    """r16: more releases than the replica used to keep (4): every one stays loaded."""
    ws = _ws(served)
    arms = [st.read_state(ws)["live"], *(_copy_of_live(ws) for _ in range(4))]
    spec = {"name": "wide", "arms": [
        {"arm": f"a{i}", "release": rid, "weight": 0.2} for i, rid in enumerate(arms)]}  # fmt: skip
    served.admin("POST", "/admin/experiments", spec)
    try:
        members = pd.read_parquet(ws.data / "members.parquet")["member_id"].head(60).tolist()
        seen = set()
        for _ in range(2):  # every member twice: members of each arm, interleaved
            for member in members:
                body = {"query": "nurse", "member_id": int(member), "k": 3}
                resp = served.client.post("/v1/search", json=body)
                assert resp.status_code == 200, resp.text
                seen.add(resp.json()["release"])
        assert seen == set(arms)
        health = _health(served)
        assert health["status"] == "ok" and health["experiment"] == "wide", health
        for rid in arms:
            assert health["releases"][rid]["state"] == "ready"
            assert health["releases"][rid]["loads"] == 1, health["releases"]  # never reloaded
    finally:
        served.admin("DELETE", "/admin/experiments")


def test_a_killed_replica_is_ready_only_once_it_serves_what_it_served(served: Server) -> None:
    until(lambda: _hits(served), lambda ids: 4_000_002 in ids, "upserts served")
    before, health_before = _hits(served), _health(served)
    lsn = health_before["releases"][health_before["release"]]["lsn"]
    replicas = served.processes(REPLICA)
    assert replicas, f"no {REPLICA} among the server's processes"
    for pid in replicas:
        os.kill(pid, signal.SIGKILL)  # a replica this test's server started
    deadline, answered = time.monotonic() + DEADLINE_S, []
    while True:  # every answer while it comes back: an error, 503 loading, or the same results
        health = _health(served)
        if health["http"] == 200:
            live = health["releases"][health["release"]]
            assert live["state"] == "ready" and live["lsn"] == lsn, health
        try:
            resp = served.client.post("/v1/search", json=QUERY)
        except httpx.TransportError:
            resp = None
        if resp is not None and resp.status_code == 200:
            assert [h["job_id"] for h in resp.json()["results"]] == before, resp.text
            answered.append(resp.status_code)
        if answered and set(served.processes(REPLICA)) - set(replicas):
            break
        assert time.monotonic() < deadline, f"no recovery: {health}"
        time.sleep(0.2)
    assert served.client.get("/livez").json()["status"] == "alive"
