"""What ``GET /metrics`` shows (Prometheus text format): per route, release and experiment arm,
request counts by status and latency histograms; refusals by reason; requests shed under load.

Each ingress replica keeps its own registry (a scrape sees that replica's counts; with several
ingress replicas, scrape each or sum them in Prometheus).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "ServingMetrics"]

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

    def observe(
        self, route: str, release: str, arm: str | None, status: int, seconds: float
    ) -> None:
        arm_label = arm or ""
        self.requests.labels(route, release, arm_label, str(status)).inc()
        if status < 500:
            self.latency.labels(route, release, arm_label).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
