"""The serving side of releases without Ray: the router keeps the last good state when
releases/state.json goes bad (and says why), a replica keeps every release requests can reach
loaded (no reload however many arms), loader errors name the release and the reason, and the
readiness answer reports each fault."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ebr.config import Workspace
from ebr.release import state as st
from ebr.release.record import FIELDS, Release, write_record
from serving.errors import ReleaseUnavailable, UnknownRelease
from serving.health import liveness, readiness, roles
from serving.release_server import (
    MAX_RELEASES_PER_REPLICA,
    SPARE_RELEASES,
    LocalReleases,
    ReleaseStatus,
)
from serving.router import BadStateFile, NoLiveRelease, ReleaseRouter
from serving.schemas import MAX_ARMS

IDS = [f"rel-v1-20260101T0000000000{i:02d}" for i in range(24)]
A, B, C = IDS[:3]


def _workspace(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path)
    for rid in (A, B, C):
        st.add_candidate(ws, rid)
    st.promote(ws, A)
    st.promote(ws, B)  # live B, rollback target A
    return ws


def _bad_versions(text: str) -> dict[str, str]:
    """Ways a state file goes bad in place: each maps to a word its reason must hold."""
    doc = json.loads(text)
    return {
        text[: len(text) // 2]: "JSON",  # half-written
        "": "JSON",  # truncated to nothing
        json.dumps({**doc, "live": None}): "no live release",
        json.dumps({**doc, "format_version": 2}): "format_version",
        json.dumps([doc]): "object",
        json.dumps({**doc, "live": IDS[9]}): "not recorded",
        json.dumps(
            {
                **doc,
                "experiment": {
                    "name": "e",
                    "salt": "e",
                    "arms": [
                        {"arm": "a", "release": A, "weight": 0.5},
                        {"arm": "b", "release": IDS[9], "weight": 0.5},
                    ],
                },
            }
        ): "arm 'b'",  # fmt: skip
    }


def _until(cond: Any) -> None:
    deadline = time.monotonic() + 30
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_a_bad_state_file_keeps_the_last_good_state_and_is_reported(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    router = ReleaseRouter(ws, poll_s=0.01)
    path = ws.releases / st.STATE_FILE
    good = path.read_text()
    for n, (content, why) in enumerate(_bad_versions(good).items(), start=1):
        path.write_text(content)  # in place, as an editor or a disk fault leaves it
        _until(lambda: router.route(7, None).release == B and router.problem() is not None)
        problem = router.problem()
        assert problem is not None and problem["file"] == str(path) and why in problem["reason"]
        assert router.route(None, None).release == B and router.serving() == [B]
        assert router.bad_reads == n
        with pytest.raises(BadStateFile, match=why):  # an admin reload says so, too
            router.reload()
        path.write_text(good)
        _until(lambda: bool(router.state()) and router.problem() is None)
    st.promote(ws, C)  # a good change after all that is followed as before
    _until(lambda: router.route(None, None).release == C)


def test_a_bad_state_file_at_start_refuses_naming_the_file(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    path = ws.releases / st.STATE_FILE
    for content, why in _bad_versions(path.read_text()).items():
        path.write_text(content)
        with pytest.raises(BadStateFile, match=why) as err:
            ReleaseRouter(ws)
        assert str(path) in str(err.value)
    path.unlink()
    with pytest.raises(NoLiveRelease, match="no live release"):
        ReleaseRouter(ws)


class CountingLoader:
    def __init__(self) -> None:
        self.loads: list[str] = []
        self.load_counts: Counter[str] = Counter()

    async def load(self, rid: str) -> Any:
        self.loads.append(rid)
        self.load_counts[rid] += 1
        if rid == IDS[-1]:
            raise UnknownRelease(rid, "no record")
        return SimpleNamespace(info=lambda: {"index": {"release": rid}})


def _releases(loader: CountingLoader) -> LocalReleases:
    releases = LocalReleases.__new__(LocalReleases)  # no Feast store needed for the cache
    releases._loader = loader  # type: ignore[assignment]
    releases._loaded = OrderedDict()
    releases._busy_since = None
    return releases


def test_every_release_an_experiment_can_reach_stays_loaded() -> None:
    assert MAX_RELEASES_PER_REPLICA >= 1 + MAX_ARMS + 1  # live + every arm + rollback target
    loader = CountingLoader()
    keep = IDS[: 1 + MAX_ARMS + 1]  # the largest experiment the API accepts, and a rollback

    async def scenario() -> None:
        releases = _releases(loader)
        await releases.preload(keep)
        for _ in range(4):  # members of every arm, round robin
            for rid in keep:
                await releases.get(rid)
        assert sorted(loader.loads) == sorted(keep)  # each loaded once, never again
        for rid in IDS[len(keep) : len(keep) + 3]:  # warmed candidates: the newest spares stay
            await releases.get(rid)
        with pytest.raises(UnknownRelease):  # a failed load evicts nothing and is not kept
            await releases.get(IDS[-1])
        assert (await releases.status(IDS[-1])).state in ("absent", "failed")
        loaded = list(releases._loaded)
        assert set(keep) <= set(loaded) and len(loaded) == len(keep) + SPARE_RELEASES
        assert await releases.status(keep[0]) == ReleaseStatus(
            "ready", info={"index": {"release": keep[0]}}, loads=1
        )
        for rid in keep:
            await releases.get(rid)
        assert sorted(loader.loads) == sorted([*keep, *IDS[len(keep) : len(keep) + 3], IDS[-1]])

    asyncio.run(scenario())


def _record(ws: Workspace, rid: str) -> Path:
    doc: dict[str, Any] = {f: None for f in FIELDS}
    doc.update(id=rid, model={"version": "v1"}, created_at="2026-01-01T00:00:00+00:00")
    return write_record(ws, doc) / "release.json"


def test_loader_errors_name_the_release_and_the_reason(tmp_path: Path) -> None:
    from serving.loaded_release import Loader

    ws = Workspace(tmp_path)
    loader = Loader.__new__(Loader)
    loader.ws = ws
    with pytest.raises(UnknownRelease, match=f"unknown release {A}: it is not recorded"):
        loader._load(A)
    path = _record(ws, B)
    path.write_text(path.read_text().replace('"v1"', '"v1", "recall": 0.999', 1))
    with pytest.raises(ReleaseUnavailable, match=f"release {B} cannot serve: .*checksum"):
        loader._load(B)
    path.write_text("{")
    with pytest.raises(ReleaseUnavailable, match=f"release {B} cannot serve: .*JSON"):
        loader._load(B)


def _status(state: str, **index: Any) -> ReleaseStatus:
    info = {"encoder": {"model_version": "v1"}, "index": {"slot": "s1", "model_version": "v1",
            "item_count": 5, **index}}  # fmt: skip
    return ReleaseStatus(state, "boom" if state == "failed" else None,
                         info if state == "ready" else None)  # fmt: skip


def test_readiness_reports_each_fault_with_its_reason() -> None:
    state = {"live": A, "experiment": {"name": "e", "arms": [
        {"arm": "x", "release": A}, {"arm": "y", "release": B}]}}  # fmt: skip
    kept = roles(state, [A, B, C])
    assert kept == {A: "live", B: "arm:y", C: "rollback"}
    info = Release.from_doc(Workspace(Path("/ws")), {
        "id": A, "model": {"version": "v1", "checksums": {}, "model_json_sha256": "x"},
        "member_interest": {"version": "v1"},
        "features": {"request_service": "r", "item_service": "i", "views": []},
        "slot": {"name": "s1", "manifest_sha256": "x", "model_version": "v1", "item_count": 5,
                 "recall_at_10": 1.0},
    })  # fmt: skip
    ok_log = {"status": "ok", "writer_alive": True, "dropped": {}}
    ready = {A: _status("ready"), B: _status("ready"), C: _status("ready")}

    def check(
        statuses: dict[str, Any] = ready,
        preloaded: bool = True,
        problem: dict[str, Any] | None = None,
        side: dict[str, Any] = ok_log,
    ) -> Any:
        return readiness(state, kept, statuses, info, preloaded, problem, side)

    assert check().status == "ok" and check().problems == []
    assert check(preloaded=False).status == "loading"
    assert check({**ready, A: _status("loading")}, preloaded=False).status == "loading"
    moved = check({**ready, A: _status("loading")})  # a new live release, after start
    assert moved.status == "degraded" and f"live release {A} is loading" in moved.problems[0]
    down = check({**ready, A: _status("failed")})
    assert down.status == "down" and f"live release {A} cannot serve: boom" in down.problems
    arm = check({**ready, B: _status("failed")})
    assert arm.status == "degraded" and f"release {B} (arm:y) cannot serve: boom" in arm.problems
    damaged = check({**ready, C: _status("ready", log_problems=["x.wal bytes 9-20 damaged"])})
    assert damaged.status == "degraded" and "log: x.wal bytes 9-20" in damaged.problems[0]
    stale = check(problem={"file": "/w/releases/state.json", "reason": "not valid JSON",
                           "since": "t0", "serving_state_read_at": "t1"})  # fmt: skip
    assert stale.status == "degraded" and "state.json cannot be used" in stale.problems[0]
    failing = {"status": "degraded", "writer_alive": True, "dropped": {"overflow": 3},
               "last_error": "OSError: No space", "pending": 9, "failing_since": "t"}  # fmt: skip
    side = check(side=failing)
    assert side.status == "degraded" and "impression log failing" in side.problems[0]
    assert "3 dropped" in side.problems[0] and not side.ok
    assert liveness(0.0, ok_log).status == "alive"
    assert liveness(1e6, ok_log).status == "stuck"
    assert liveness(0.0, {**ok_log, "writer_alive": False}).status == "stuck"
