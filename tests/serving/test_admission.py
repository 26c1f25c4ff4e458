"""Backpressure at the ingress: past ``max_inflight`` searches in flight, a request is answered
503 with Retry-After before its body is read; other routes are never shed; the limit frees as
requests finish (recovery needs no restart). The ASGI middleware is driven directly."""

from __future__ import annotations

import asyncio
from typing import Any

from serving.metrics import Admission, AdmissionMiddleware, ServingMetrics


def _scope(path: str) -> dict[str, Any]:
    return {"type": "http", "path": path, "method": "POST", "headers": []}


async def _call(mw: AdmissionMiddleware, path: str) -> tuple[int, dict[bytes, bytes]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await mw(_scope(path), receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], dict(start["headers"])


def test_requests_past_the_limit_are_shed_at_once_and_the_limit_frees() -> None:
    gate = asyncio.Event()
    body_reads = []

    async def slow_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body_reads.append(scope["path"])
        await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    metrics = ServingMetrics()
    mw = AdmissionMiddleware(slow_app)
    AdmissionMiddleware.admission = Admission(metrics, max_inflight=2)

    async def scenario() -> list[Any]:
        held = [asyncio.create_task(_call(mw, "/v1/search")) for _ in range(2)]
        await asyncio.sleep(0.01)
        shed = await asyncio.wait_for(_call(mw, "/v1/members/7/recommendations"), 1.0)
        again = await asyncio.wait_for(_call(mw, "/v1/search"), 1.0)
        health = asyncio.create_task(_call(mw, "/healthz"))  # never shed
        await asyncio.sleep(0.01)
        gate.set()
        done = await asyncio.gather(*held, health)
        after = await _call(mw, "/v1/search")  # recovered: the limit freed
        return [shed, again, done, after]

    try:
        shed, again, done, after = asyncio.run(scenario())
    finally:
        AdmissionMiddleware.admission = None
    assert shed[0] == 503 and shed[1][b"retry-after"] == b"1"
    assert again[0] == 503
    assert [status for status, _ in done] == [200, 200, 200] and after[0] == 200
    assert body_reads.count("/v1/search") == 3  # shed requests never reached the app
    text = metrics.render().decode()
    assert 'ebr_shed_requests_total{route="recommendations"} 1.0' in text
    assert 'ebr_shed_requests_total{route="search"} 1.0' in text
    assert "ebr_inflight_requests 0.0" in text


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


def test_only_a_request_admitted_into_an_idle_replica_counts_as_idle(monkeypatch: Any) -> None:
    """``arrived_idle``: nothing in flight for ``IDLE_GAP_S`` before it. A request that
    follows another at once, or overlaps one, is part of a (possible) backlog."""
    from serving import metrics as m

    clock = _Clock()
    monkeypatch.setattr(m, "time", clock)
    adm = Admission(ServingMetrics(), max_inflight=8)
    seen = []

    def enter() -> None:
        assert adm.try_enter("search")
        seen.append(m.arrived_idle.get())

    clock.now += 1.0
    enter()  # idle for a second: idle
    enter()  # overlaps the first
    adm.leave()
    adm.leave()
    clock.now += m.IDLE_GAP_S / 10
    enter()  # right after the replica emptied
    adm.leave()
    clock.now += m.IDLE_GAP_S * 2
    enter()
    assert seen == [True, False, False, True]


def test_idle_requests_run_on_the_event_loop_and_the_rest_on_the_worker(
    platform_ws: Any,
) -> None:
    import threading

    from ebr.config import Workspace
    from ebr.release.state import read_state
    from serving.metrics import arrived_idle
    from serving.release_server import LocalReleases

    live = read_state(Workspace(platform_ws))["live"]
    releases = LocalReleases(str(platform_ws), verify=True, refresh_s=1.0)

    def where(_: Any) -> str:
        return threading.current_thread().name

    async def run(idle: bool) -> str:
        arrived_idle.set(idle)
        return await releases._run(live, where)

    async def both() -> tuple[str, str, list[str]]:
        loop_thread = threading.current_thread().name
        idle, queued = await run(True), await run(False)
        gate = threading.Event()
        blocked = asyncio.ensure_future(releases._run(live, lambda _: gate.wait(5) and where(_)))
        await asyncio.sleep(0.05)  # the worker is busy now: an idle arrival must queue
        behind = asyncio.ensure_future(run(True))
        await asyncio.sleep(0.05)
        gate.set()
        return loop_thread, idle, [await blocked, await behind, queued]  # type: ignore[list-item]

    loop_thread, idle, on_worker = asyncio.run(both())
    assert idle == loop_thread
    assert all(name.startswith("release-work") for name in on_worker), on_worker
