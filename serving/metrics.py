"""What ``GET /metrics`` shows (Prometheus text format): per route, release and experiment arm,
request counts by status and latency histograms; refusals by reason; requests shed under load.

Each ingress replica keeps its own registry (a scrape sees that replica's counts; with several
ingress replicas, scrape each or sum them in Prometheus).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import HTTPException
from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from serving.errors import (
    ReleaseMismatch,
    ReleaseUnavailable,
    UnknownMember,
    UnknownRelease,
    raised,
)

__all__ = ["CONTENT_TYPE", "Admission", "ServingMetrics", "answered"]
T = TypeVar("T")
RETRY_AFTER_S = 1  # what a shed request is told to wait

# Seconds; serving answers in ~5-50 ms, overload pushes the tail to seconds.
BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServingMetrics:
    """The ingress's counters and histograms (one registry per instance)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["route", "release", "arm"]
        self.requests = Counter(
            "ebr_requests", "Requests answered, by route, release, arm and HTTP status",
            [*labels, "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "ebr_request_seconds", "Server-side latency of answered requests",
            labels, buckets=BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.refused = Counter(
            "ebr_release_refusals", "Requests a release refused, by reason (never a silent "
            "wrong answer: vector_release_mismatch, release_unavailable)",
            ["release", "reason"], registry=self.registry,
        )  # fmt: skip
        self.shed = Counter(
            "ebr_shed_requests", "Requests answered 503 at once because too many were in flight",
            ["route"], registry=self.registry,
        )  # fmt: skip
        self.inflight = Gauge(
            "ebr_inflight_requests", "Requests being served now", registry=self.registry
        )
        self.health: dict[str, Any] = {}  # the latest health numbers (HealthCollector)
        self.registry.register(HealthCollector(lambda: self.health))

    def observe(
        self, route: str, release: str, arm: str | None, status: int, seconds: float
    ) -> None:
        arm_label = arm or ""
        self.requests.labels(route, release, arm_label, str(status)).inc()
        if status < 500:
            self.latency.labels(route, release, arm_label).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HealthCollector:
    """The request path's health as metrics, read at scrape time from the numbers the ingress
    last gathered (``ServingMetrics.health``, the shape of ``serving.health.readiness``'s
    inputs): the impression log's drops and failures, the state file, slot-log problems."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self._read = read

    def collect(self) -> list[Metric]:
        snap = self._read()
        side = snap.get("impression_log", {})
        dropped = CounterMetricFamily(
            "ebr_impression_log_dropped_records", "Impression records not written, by reason",
            labels=["reason"],
        )  # fmt: skip
        for reason, n in side.get("dropped", {}).items():
            dropped.add_metric([reason], n)
        problems = GaugeMetricFamily(
            "ebr_slot_log_problems", "Problems found in a kept release's slot log",
            labels=["release"],
        )  # fmt: skip
        for rid, n in snap.get("slot_log_problems", {}).items():
            problems.add_metric([rid], n)
        gauge, counter = GaugeMetricFamily, CounterMetricFamily
        return [
            dropped, problems,
            counter("ebr_impression_log_write_errors", "Failed impression-log write attempts",
                    value=side.get("write_errors", 0)),
            gauge("ebr_impression_log_degraded", "1 while impression-log writes fail",
                  value=int(side.get("status") == "degraded")),
            gauge("ebr_impression_log_pending_records", "Impression records waiting to be "
                  "written", value=side.get("pending", 0)),
            gauge("ebr_release_state_file_stale", "1 while releases/state.json cannot be used "
                  "(routing by the last good state)", value=int(bool(snap.get("state_problem")))),
            counter("ebr_release_state_file_bad_reads", "Distinct unusable versions of "
                    "releases/state.json seen", value=snap.get("state_bad_reads", 0)),
            gauge("ebr_ready", "1 when /healthz answers 200 (ok or degraded)",
                  value=int(snap.get("status") in ("ok", "degraded"))),
        ]  # fmt: skip


async def answered(
    call: Callable[[], Awaitable[Any]], metrics: ServingMetrics, release: str, named: bool = False
) -> Any:
    """Await a handle call made for ``release``; a replica's deliberate errors become HTTP
    answers (404 unknown member, 500 release mismatch; a release that is unknown or cannot
    serve: 503 for a request routed to it, 404 / 409 when the caller ``named`` it, an admin
    call), the release errors counted by reason."""
    try:
        return await call()
    except Exception as exc:
        if (member := raised(exc, UnknownMember)) is not None:
            raise HTTPException(status_code=404, detail=str(member)) from exc
        if (unknown := raised(exc, UnknownRelease)) is not None:
            if not named:  # a named id is the caller's: no series per made-up id
                metrics.refused.labels(release, "unknown_release").inc()
            raise HTTPException(status_code=404 if named else 503, detail=str(unknown)) from exc
        if (down := raised(exc, ReleaseUnavailable)) is not None:
            metrics.refused.labels(release, "release_unavailable").inc()
            raise HTTPException(status_code=409 if named else 503, detail=str(down)) from exc
        if (mixed := raised(exc, ReleaseMismatch)) is not None:
            metrics.refused.labels(release, "vector_release_mismatch").inc()
            raise HTTPException(status_code=500, detail=str(mixed)) from exc
        raise


SERVICE_EWMA = 0.1  # weight of the newest release-work time in Admission's running estimate


class Admission:
    """Admission control of one ingress replica: at most ``max_inflight`` searches and feeds
    in flight. One more is answered 503 with ``Retry-After`` at once, before its body is even
    read (``AdmissionMiddleware``), and counted as shed, rather than queued: latency holds
    under overload and the service recovers as soon as load drops.

    With ``queue_budget_s``, also shed a request that would wait longer than that: the
    replica's release work runs one request at a time (``LocalReleases``), so the requests in
    flight ahead of it keep it ``inflight x service`` seconds, ``service`` being the running
    mean of the work's own time (``served``). ``max_inflight`` alone lets accepted requests
    wait ``max_inflight`` times whatever one costs (8 x 25 ms of a ranked signed-in search on
    a saturated machine: p99 over 200 ms at 3x capacity)."""

    def __init__(
        self, metrics: ServingMetrics, max_inflight: int, queue_budget_s: float | None = None
    ) -> None:
        self._metrics, self._max, self._inflight = metrics, max_inflight, 0
        self._budget, self._service = queue_budget_s, 0.0

    def served(self, seconds: float) -> None:
        """One request's release work took ``seconds`` (called by the worker)."""
        self._service += SERVICE_EWMA * (seconds - self._service)

    def try_enter(self, route: str) -> bool:
        late = self._budget is not None and self._inflight * self._service > self._budget
        if self._inflight >= self._max or late:
            self._metrics.shed.labels(route).inc()
            return False
        self._inflight += 1
        self._metrics.inflight.set(self._inflight)
        return True

    def leave(self) -> None:
        self._inflight -= 1
        self._metrics.inflight.set(self._inflight)

    async def observed(
        self, route: str, release: str, arm: str | None, work: Callable[[], Awaitable[T]]
    ) -> T:
        """Run an admitted request's ``work``; count and time it by its final status."""
        start, status = time.perf_counter(), 200
        try:
            return await work()
        except HTTPException as exc:
            status = exc.status_code
            raise
        except Exception:
            status = 500
            raise
        finally:
            self._metrics.observe(route, release, arm, status, time.perf_counter() - start)


ADMITTED = {"/v1/search": "search"}  # path -> metrics route; recommendations by prefix below


class AdmissionMiddleware:
    """ASGI middleware: sheds a search or feed past the ingress's ``Admission`` before
    anything else runs (no body read, no validation): a 503 costs microseconds."""

    admission: Admission | None = None  # the replica's; set by the ingress when it starts

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        route = ADMITTED.get(path) or (
            "recommendations" if path.startswith("/v1/members/") else None
        )
        admission = AdmissionMiddleware.admission
        if route is None or admission is None:
            await self.app(scope, receive, send)
            return
        if not admission.try_enter(route):
            body = b'{"detail": "overloaded: too many requests in flight; retry shortly"}'
            headers = [(b"content-type", b"application/json"),
                       (b"retry-after", str(RETRY_AFTER_S).encode()),
                       (b"content-length", str(len(body)).encode())]  # fmt: skip
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        try:
            await self.app(scope, receive, send)
        finally:
            admission.leave()
