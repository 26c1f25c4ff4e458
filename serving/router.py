"""Which release answers a request: the live one, or the request's experiment arm.

The ingress asks ``ReleaseRouter.route`` once per request and sends both hops (encode, search)
to that release, so a response never mixes versions, whatever moves meanwhile. The router
follows ``releases/state.json`` (``ebr.release.state``): it re-reads it when the file changes
(checked at most every ``poll_s``) and at once after an admin change (``reload``). A promote
or an experiment that names a candidate reaches requests within ``poll_s``, without a
redeploy; requests already routed finish on the release they started with.

A state file that cannot be used (torn or half-written, empty, not the format this code
reads, no live release, an arm or live release that is not recorded) is never adopted while
serving: the router keeps routing by the last good state and reports the bad file
(``problem()``, counted in ``bad_reads``) until a good one replaces it. At start there is no
last good state, so it raises ``BadStateFile`` naming the file.

No heavy imports: the ingress replica runs this.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ebr.config import Workspace
from ebr.release.assign import assign
from ebr.release.record import Release, check_release_id, read_release
from ebr.release.state import STATE_FILE, read_state, rollback_target, serving_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """Where one request goes: the release, and its arm of the running experiment (if any)."""

    release: str
    arm: str | None = None
    experiment: str | None = None


class BadStateFile(ValueError):
    """``releases/state.json`` cannot be served by: the file and the reason."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(str(path), reason)
        self.path, self.reason = path, reason

    def __str__(self) -> str:
        return self.reason if str(self.path) in self.reason else f"{self.path}: {self.reason}"


class NoLiveRelease(BadStateFile):
    """The workspace has no live release to serve."""


def _check_release(state: dict[str, Any], rid: Any, what: str) -> list[str]:
    try:
        check_release_id(rid)
    except ValueError as err:
        return [f"{what}: {err}"]
    entry = state["releases"].get(rid)
    if not isinstance(entry, dict):
        return [f"{what} {rid} is not recorded in 'releases'"]
    if entry.get("state") == "retired":
        return [f"{what} {rid} is retired"]
    return []


def state_problems(state: Any) -> list[str]:
    """What makes ``state`` (a parsed state.json) unusable for routing; [] when usable."""
    if not isinstance(state, dict):
        return [f"the state must be a JSON object, got {type(state).__name__}"]
    if not isinstance(state.get("releases"), dict):
        return ["'releases' must be an object of release id -> entry"]
    if not isinstance(state.get("live_history", []), list):
        return ["'live_history' must be a list of release ids"]
    problems = _check_release(state, state.get("live"), "'live'")
    experiment = state.get("experiment")
    if experiment is None:
        return problems
    arms = experiment.get("arms") if isinstance(experiment, dict) else None
    if (
        not isinstance(arms, list) or len(arms) < 2
        or not all(isinstance(experiment.get(k), str) for k in ("name", "salt"))
    ):  # fmt: skip
        return [*problems, "'experiment' must have a 'name', a 'salt' and >= 2 'arms'"]
    for i, arm in enumerate(arms):
        if not isinstance(arm, dict) or not isinstance(arm.get("arm"), str):
            problems.append(f"experiment arm {i} must be an object with a name ('arm')")
            continue
        weight = arm.get("weight")
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not (math.isfinite(weight) and weight > 0)
        ):
            problems.append(f"experiment arm {arm['arm']!r}: weight must be > 0, got {weight!r}")
        problems += _check_release(state, arm.get("release"), f"experiment arm {arm['arm']!r}")
    return problems


def load_state(ws: Workspace) -> dict[str, Any]:
    """The state of ``ws``, checked for routing; ``BadStateFile`` names the file and why."""
    path = ws.releases / STATE_FILE
    try:
        state = read_state(ws)
    except (OSError, ValueError, AttributeError, TypeError) as err:  # torn, empty, a list...
        named = str(path) in str(err)  # ebr.release.state's errors name the file already
        reason = str(err) if named else f"unreadable ({type(err).__name__}: {err})"
        raise BadStateFile(path, reason) from err
    if isinstance(state, dict) and state.get("live") is None:
        raise NoLiveRelease(
            path, "no live release: provision and promote one (ebr release provision / "
            "promote, or the build_platform workflow)",
        )  # fmt: skip
    problems = state_problems(state)
    if problems:
        raise BadStateFile(path, "; ".join(problems))
    return state


class ReleaseRouter:
    """Routes requests by the release state of one workspace (thread-safe)."""

    def __init__(self, ws: Workspace, poll_s: float = 0.5) -> None:
        self._ws, self.poll_s = ws, poll_s
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._read_at = 0.0  # wall time the state in use was read
        self._infos: dict[str, Release] = {}
        self._problem: BadStateFile | None = None  # the file's current problem, if any
        self._problem_since = 0.0
        self._problem_stamp: tuple[int, int, int] | None = None
        self.bad_reads = 0  # distinct bad versions of the file seen (a metric)
        self.generation = 0  # +1 per state adopted: the ingress reloads releases on a change
        self.reload()

    @property
    def path(self) -> Path:
        return self._ws.releases / STATE_FILE

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        # An atomic replace is a new inode; an in-place rewrite changes the size or mtime.
        return st.st_mtime_ns, st.st_ino, st.st_size

    def reload(self) -> dict[str, Any]:
        """Re-read the state now and route by it; returns it. Raises ``BadStateFile`` (the
        last good state stays in use and the problem is reported) when it cannot be used."""
        with self._lock:
            stamp = self._file_stamp()
            self._checked = time.monotonic()
            try:
                state = load_state(self._ws)
            except BadStateFile as bad:
                self._report(bad, stamp)
                raise
            if self._problem is not None:
                log.warning("%s is good again: routing by it", self.path)
            self._state, self._stamp, self._problem = state, stamp, None
            self._read_at, self.generation = time.time(), self.generation + 1
            return state

    def _report(self, bad: BadStateFile, stamp: tuple[int, int, int] | None) -> None:
        if self._problem is None or stamp != self._problem_stamp:
            self.bad_reads += 1
            log.error("%s; %s", bad, "still routing by the last good state" if self._state
                      else "nothing to route by")  # fmt: skip
            if self._problem is None:
                self._problem_since = time.time()
        self._problem, self._problem_stamp = bad, stamp

    def state(self) -> dict[str, Any]:
        """The state in use, re-read if the file changed (checked at most every ``poll_s``;
        every time while the file is bad). Never raises: a bad file keeps the last good."""
        now = time.monotonic()
        if now - self._checked >= self.poll_s:
            self._checked = now
            if self._problem is not None or self._file_stamp() != self._stamp:
                try:
                    self.reload()
                except BadStateFile:
                    pass  # reported by reload (problem(), bad_reads, the log)
        return self._state

    def problem(self) -> dict[str, Any] | None:
        """The state file's problem while it has one: ``file``, ``reason``, ``since`` and
        ``serving_state_read_at`` (when the state still in use was read), UTC ISO."""
        bad = self._problem
        if bad is None:
            return None
        return {
            "file": str(bad.path), "reason": bad.reason,
            "since": datetime.fromtimestamp(self._problem_since, UTC).isoformat(),
            "serving_state_read_at": datetime.fromtimestamp(self._read_at, UTC).isoformat(),
        }  # fmt: skip

    def route(self, member_id: int | None, request_key: str | None) -> Route:
        """The live release, or for a request of a unit in the running experiment its arm's
        release (anonymous requests need a request key to take part)."""
        state = self.state()
        experiment = state.get("experiment")
        if experiment and (member_id is not None or request_key):
            arm = assign(experiment, member_id, request_key)
            return Route(arm["release"], arm["arm"], experiment["name"])
        return Route(state["live"])

    def pinned(self, release_id: str) -> Route:
        """A request that names its release (the relevance page's side-by-side): one this
        replica keeps (``keep``), answered outside any experiment (no arm: an A/B readout
        never counts it). Raises ValueError naming the releases it may name."""
        kept = self.keep()
        if release_id not in kept:
            raise ValueError(
                f"release: {release_id} is not one requests may name now (those kept: "
                f"{', '.join(kept)})"
            )
        return Route(release_id)

    def serving(self) -> list[str]:
        """Releases requests may be routed to now (live and every arm)."""
        return serving_ids(self.state())

    def keep(self) -> list[str]:
        """Releases a replica keeps loaded: those requests may reach (``serving``), then the
        one a rollback would go back to (the live release a promotion replaced)."""
        state = self.state()
        try:
            previous = [rollback_target(state)]
        except (ValueError, KeyError):
            previous = []
        return list(dict.fromkeys(serving_ids(state) + previous))

    def info(self, release_id: str) -> Release:
        """A release's record, typed (read once per process: records never change)."""
        hit = self._infos.get(release_id)
        if hit is None:
            hit = self._infos[release_id] = read_release(self._ws, release_id)
        return hit
