"""One ingress replica's releases kept in step with the release state, and what the replica
says about itself (``serving.health``).

At start (Serve's first ``check_health``, awaited before Serve routes anything to the replica)
``Keeper`` loads every release the state can route to, and the rollback target, so a started
or restarted replica answers as it did before; afterwards it follows ``releases/state.json``
(every ``poll_s``) and loads what a change makes reachable before requests need it.

No heavy imports: the ingress replica runs this.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from ebr.release.impressions import ImpressionLog
from serving.health import liveness, readiness, roles
from serving.metrics import ServingMetrics
from serving.router import ReleaseRouter
from serving.schemas import HealthResponse, LivenessResponse

log = logging.getLogger(__name__)


class Releases(Protocol):
    """What the keeper needs of ``LocalReleases`` / ``RemoteReleases``."""

    async def preload(self, keep: list[str]) -> None: ...
    def retain(self, keep: list[str]) -> None: ...
    async def status(self, release_id: str) -> Any: ...
    def busy_s(self) -> float: ...


class Keeper:
    """Keeps the releases the state routes to loaded; answers readiness and liveness."""

    def __init__(
        self, router: ReleaseRouter, releases: Releases, impressions: ImpressionLog,
        metrics: ServingMetrics,
    ) -> None:  # fmt: skip
        self._router, self._releases = router, releases
        self._log, self._metrics = impressions, metrics
        self._preload: asyncio.Task[None] | None = None  # the start-up load
        self._follow: asyncio.Task[None] | None = None
        self._synced = -1  # the router generation whose releases are kept
        self._held: list[str] = []  # kept beyond the state's while an admin call runs

    def keep(self) -> list[str]:
        """What this replica keeps: what the state can route to, and releases ``holding``."""
        return list(dict.fromkeys([*self._router.keep(), *self._held]))

    async def sync(self) -> None:
        """Keep (and load now) the releases the current state can route to."""
        self._synced = self._router.generation
        await self._releases.preload(self.keep())

    @contextmanager
    def holding(self, release_ids: list[str]) -> Iterator[None]:
        """Keep ``release_ids`` too while the block runs (an admin call warming the arms of
        an experiment it is about to start: the first warmed must not be evicted)."""
        self._held = [*self._held, *release_ids]
        self._releases.retain(self.keep())
        try:
            yield
        finally:
            for rid in release_ids:
                self._held.remove(rid)
            self._releases.retain(self.keep())

    def start(self) -> asyncio.Task[None]:
        """The start-up load (started once: by Serve's first health check, or a route)."""
        if self._preload is None:
            self._preload = asyncio.ensure_future(self.sync())
            self._follow = asyncio.ensure_future(self._follow_state())
        return self._preload

    async def _follow_state(self) -> None:
        # A CLI promote or experiment reaches this replica within poll_s: its releases are
        # loaded (and the ones no longer reachable let go) before requests need them.
        while True:
            await asyncio.sleep(self._router.poll_s)
            try:
                self._router.state()
                if self._router.generation != self._synced:
                    await self.sync()
            except Exception:  # the loop must outlive any one failure; loads report theirs
                log.exception("following releases/state.json failed; retrying")

    async def check_health(self) -> None:
        """Serve's health check: the start-up load first, then liveness (raises: restart)."""
        await asyncio.shield(self.start())
        alive = self.liveness()
        if alive.status != "alive":
            raise RuntimeError("; ".join(alive.problems))

    def liveness(self) -> LivenessResponse:
        problems = []
        if self._follow is not None and self._follow.done():
            problems.append("the task following releases/state.json has stopped")
        alive = liveness(self._releases.busy_s(), self._log.health())
        if problems:
            return LivenessResponse(status="stuck", problems=alive.problems + problems)
        return alive

    async def health(self) -> HealthResponse:
        """Readiness (``serving.health.readiness``); also the numbers ``/metrics`` shows."""
        self.start()
        state = self._router.state()
        kept = roles(state, self._router.keep())
        statuses = {rid: await self._releases.status(rid) for rid in kept}
        live_info = None
        if statuses[state["live"]].state == "ready":
            live_info = self._router.info(state["live"])  # read when it loaded: it is there
        ready = self._preload is not None and self._preload.done()
        problem = self._router.problem()
        body = readiness(state, kept, statuses, live_info, ready, problem, self._log.health())
        self._metrics.health = {
            "status": body.status, "impression_log": body.impression_log,
            "state_problem": problem, "state_bad_reads": self._router.bad_reads,
            "slot_log_problems": {r: len(v.get("log_problems", []))
                                  for r, v in body.releases.items()},
        }  # fmt: skip
        return body
