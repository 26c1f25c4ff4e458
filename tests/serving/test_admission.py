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


def test_a_queue_budget_sheds_what_would_wait_too_long() -> None:
    """With ``queue_budget_s``, a request is shed once those in flight ahead of it would keep
    it waiting past the budget at the release work's measured pace, well before
    ``max_inflight``; faster work admits more again."""
    metrics = ServingMetrics()
    admission = Admission(metrics, max_inflight=100, queue_budget_s=0.1)
    assert all(admission.try_enter("search") for _ in range(20))  # nothing measured yet
    for _ in range(20):
        admission.leave()
    for _ in range(200):
        admission.served(0.030)  # 30 ms a request: 3 ahead wait 90 ms, 4 would wait 120
    admitted = 0
    while admission.try_enter("search"):
        admitted += 1
    assert admitted == 4  # the 5th would wait behind 4 x 30 ms
    for _ in range(admitted):
        admission.leave()
    for _ in range(200):
        admission.served(0.0045)  # 22 ahead wait 99 ms
    assert sum(admission.try_enter("search") for _ in range(30)) == 23
    assert 'ebr_shed_requests_total{route="search"} 8.0' in metrics.render().decode()
    unbounded = Admission(ServingMetrics(), max_inflight=5)  # no budget: max_inflight alone
    unbounded.served(10.0)
    assert sum(unbounded.try_enter("search") for _ in range(8)) == 5
