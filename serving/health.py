"""What an ingress replica says about itself: readiness (``GET /healthz``), liveness
(``GET /livez`` and Serve's ``check_health``), each with its reasons.

Readiness means "serves what it served before": the live release and every release requests
can reach are loaded and their slot logs replayed. It reports, beside that, everything on the
request path that is wrong while requests are still answered (``degraded``): an experiment
arm or the rollback target that cannot load, damage found in a slot's log, a state file that
cannot be used (the router keeps the last good state), a side log that cannot write.

    status    HTTP  meaning
    ok        200   everything on the request path works
    degraded  200   requests are answered; ``problems`` says what is wrong
    loading   503   the replica is loading its releases (after a start or a restart)
    down      503   the live release cannot serve (``problems`` says why)

Liveness is narrower: whether a restart of this replica would help (its release worker stuck
on one request, its impression-log writer gone). A broken release is not a liveness failure:
a restart loads the same files again.

No heavy imports: the ingress replica runs this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from ebr.release.record import Release
from serving.schemas import HealthResponse, LivenessResponse

LIVENESS_STUCK_S = 120.0  # one request's work running longer than this: the worker is stuck


def roles(state: Mapping[str, Any], keep: list[str]) -> dict[str, str]:
    """Why each kept release is kept: ``live``, ``arm:<name>`` or ``rollback``."""
    out = {rid: "rollback" for rid in keep}
    for arm in (state.get("experiment") or {}).get("arms", []):
        out[arm["release"]] = f"arm:{arm['arm']}"
    out[state["live"]] = "live"
    return out


def _release_view(role: str, status: Any) -> dict[str, Any]:
    view: dict[str, Any] = {"role": role, "state": status.state}
    if status.reason:
        view["reason"] = status.reason
    if status.loads is not None:
        view["loads"] = status.loads
    index = (status.info or {}).get("index") or {}
    for key in ("slot", "lsn", "log_problems"):
        if key in index:
            view[key] = index[key]
    if (status.info or {}).get("threads"):
        view["threads"] = status.info["threads"]  # as the replica reads them (threadpoolctl)
    return view


def readiness(
    state: Mapping[str, Any],
    kept: Mapping[str, str],
    statuses: Mapping[str, Any],
    live_info: Release | None,
    preloaded: bool,
    state_problem: Mapping[str, Any] | None,
    log_health: Mapping[str, Any],
) -> HealthResponse:
    """The readiness answer from what the replica knows.

    Args:
        state: the release state in use (the last good one). kept: release id -> role of
        every release kept loaded. statuses: release id -> ``ReleaseStatus`` (state,
        reason, info). live_info: the live release's record (None when unreadable).
        preloaded: the start-up load finished. state_problem: ``ReleaseRouter.problem()``.
        log_health: ``ImpressionLog.health()``.
    """
    live = state["live"]
    problems: list[str] = []
    loading = not preloaded
    live_status = statuses[live]
    if live_status.state in ("loading", "absent") and preloaded:  # a new live release
        problems.append(f"live release {live} is {live_status.state}: its requests wait")
    elif live_status.state in ("loading", "absent"):
        loading = True
    elif live_status.state == "failed":
        problems.append(f"live release {live} cannot serve: {live_status.reason}")
    enc = (live_status.info or {}).get("encoder") or {}
    idx = (live_status.info or {}).get("index") or {}
    mismatch = (
        live_status.state == "ready"
        and live_info is not None
        and not (
            idx.get("slot") == live_info.slot.name
            and idx.get("model_version") == live_info.version == enc.get("model_version")
        )
    )
    if mismatch and live_info is not None:
        problems.append(
            f"live release {live} disagrees with its record: slot {idx.get('slot')} / model "
            f"{idx.get('model_version')} / encoder {enc.get('model_version')}, recorded slot "
            f"{live_info.slot.name} / model {live_info.version}"
        )
    down = live_status.state == "failed" or mismatch
    for rid, role in kept.items():
        st = statuses[rid]
        if rid != live and st.state == "failed":
            problems.append(f"release {rid} ({role}) cannot serve: {st.reason}")
        elif rid != live and st.state != "ready" and role.startswith("arm:"):
            if not preloaded:
                loading = True
            problems.append(f"release {rid} ({role}) is {st.state}: its requests wait")
        index = (st.info or {}).get("index") or {}
        for problem in index.get("log_problems") or []:
            problems.append(f"release {rid} ({role}) slot {index.get('slot')} log: {problem}")
    if state_problem:
        problems.append(
            f"{state_problem['file']} cannot be used since {state_problem['since']}: "
            f"{state_problem['reason']}; routing by the state read at "
            f"{state_problem['serving_state_read_at']}"
        )
    problems += side_log_problems(log_health)
    if loading and not down:
        problems.insert(0, "loading: the releases this replica serves are loading and "
                        "replaying their slot logs")  # fmt: skip
    status: Literal["ok", "degraded", "loading", "down"] = (
        "down" if down else "loading" if loading else "degraded" if problems else "ok"
    )
    experiment = state.get("experiment")
    return HealthResponse(
        status=status, ok=status == "ok", problems=problems, release=live,
        slot=idx.get("slot"), model_version=idx.get("model_version"),
        encoder_model_version=enc.get("model_version"),
        member_interest_version=enc.get("member_interest_version"),
        item_count=idx.get("item_count"), recall_at_10=idx.get("recall_at_10"),
        serving=[r for r, role in kept.items() if role != "rollback"],
        experiment=experiment["name"] if experiment else None,
        releases={rid: _release_view(role, statuses[rid]) for rid, role in kept.items()},
        state_file={"status": "stale", **state_problem} if state_problem else {"status": "good"},
        impression_log=dict(log_health),
    )  # fmt: skip


def side_log_problems(log_health: Mapping[str, Any]) -> list[str]:
    """The impression log's problems, if any: failing writes, a dead writer thread."""
    out = []
    if log_health.get("status") == "degraded":
        dropped = sum(log_health.get("dropped", {}).values())
        out.append(
            f"impression log failing since {log_health.get('failing_since')}: "
            f"{log_health.get('last_error')}; {log_health.get('pending')} records waiting, "
            f"{dropped} dropped; retrying (searches are unaffected)"
        )
    if not log_health.get("writer_alive", True):
        out.append("impression log writer thread is not running")
    return out


def liveness(busy_s: float, log_health: Mapping[str, Any]) -> LivenessResponse:
    """``stuck`` when a restart would help: the release worker has run one request's work
    for over ``LIVENESS_STUCK_S``, or the impression log's writer thread is gone."""
    problems = []
    if busy_s > LIVENESS_STUCK_S:
        problems.append(f"the release worker has run one request for {busy_s:.0f} s")
    if not log_health.get("writer_alive", True):
        problems.append("impression log writer thread is not running")
    return LivenessResponse(status="stuck" if problems else "alive", problems=problems)
