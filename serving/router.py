"""Which release answers a request: the live one, or the request's experiment arm.

The ingress asks ``ReleaseRouter.route`` once per request and sends both hops (encode, search)
to that release, so a response never mixes versions, whatever moves meanwhile. The router
follows ``releases/state.json`` (``ebr.release.state``): it re-reads it when the file changes
(checked at most every ``poll_s``) and at once after an admin change (``reload``). A promote
or an experiment that names a candidate reaches requests within ``poll_s``, without a
redeploy; requests already routed finish on the release they started with.

No heavy imports: the ingress replica runs this.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from ebr.config import Workspace
from ebr.release.assign import assign
from ebr.release.record import read_record
from ebr.release.state import STATE_FILE, read_state, serving_ids


@dataclass(frozen=True)
class Route:
    """Where one request goes: the release, and its arm of the running experiment (if any)."""

    release: str
    arm: str | None = None
    experiment: str | None = None


@dataclass(frozen=True)
class ReleaseInfo:
    """What a response names about a release (from its verified record)."""

    release: str
    model_version: str
    slot: str
    interest_version: str | None


class NoLiveRelease(RuntimeError):
    """The workspace has no live release to serve."""


class ReleaseRouter:
    """Routes requests by the release state of one workspace (thread-safe)."""

    def __init__(self, ws: Workspace, poll_s: float = 0.5) -> None:
        self._ws, self._poll_s = ws, poll_s
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._infos: dict[str, ReleaseInfo] = {}
        self.reload()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self._ws.releases / STATE_FILE)
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_ino  # an atomic replace is a new inode

    def reload(self) -> dict[str, Any]:
        """Re-read the state now; returns it. Raises ``NoLiveRelease`` without a live release."""
        with self._lock:
            stamp, state = self._file_stamp(), read_state(self._ws)
            if not state["live"]:
                raise NoLiveRelease(
                    f"no live release in {self._ws.releases}: provision and promote one "
                    "(python -m ebr.release provision / promote, or the build_platform workflow)"
                )
            self._state, self._stamp, self._checked = state, stamp, time.monotonic()
            return state

    def state(self) -> dict[str, Any]:
        """The current state, re-read if the file changed (checked at most every ``poll_s``)."""
        now = time.monotonic()
        if now - self._checked >= self._poll_s:
            self._checked = now
            if self._file_stamp() != self._stamp:
                self.reload()
        return self._state

    def route(self, member_id: int | None, request_key: str | None) -> Route:
        """The live release, or for a request of a unit in the running experiment its arm's
        release (anonymous requests need a request key to take part)."""
        state = self.state()
        experiment = state.get("experiment")
        if experiment and (member_id is not None or request_key):
            arm = assign(experiment, member_id, request_key)
            return Route(arm["release"], arm["arm"], experiment["name"])
        return Route(state["live"])

    def serving(self) -> list[str]:
        """Releases requests may be routed to now (live and every arm)."""
        return serving_ids(self.state())

    def info(self, release_id: str) -> ReleaseInfo:
        """Model version, slot and interest version of a release (its record, read once)."""
        hit = self._infos.get(release_id)
        if hit is None:
            record = read_record(self._ws, release_id)
            interest = record["member_interest"]
            hit = self._infos[release_id] = ReleaseInfo(
                release_id,
                record["model"]["version"],
                record["slot"]["name"],
                None if interest is None else interest["version"],
            )
        return hit
