"""The serving state pointer: which release is live, which serve as experiment arms, and the
state of every release. ``releases/state.json`` is the only mutable file of the releases::

    {"format_version": 1,
     "live": "rel-v2-...",                       # what requests outside an experiment get
     "live_history": ["rel-v1-..."],            # what a plain rollback returns to, oldest first
     "experiment": {"name": "v3-vs-v2", "salt": "v3-vs-v2", "started_at": "...",
                    "arms": [{"arm": "control", "release": "rel-v2-...", "weight": 0.5},
                             {"arm": "treatment", "release": "rel-v3-...", "weight": 0.5}]},
     "releases": {"rel-v2-...": {"state": "serving", "version": "v2", "since": "..."}},
     "events": [{"at": "...", "action": "promote", "release": "rel-v2-...", ...}]}

A release is ``candidate`` once recorded and gated, ``serving`` from the first time it is live
or an arm (it stays so, warm and ready for a rollback, until retired) and ``retired`` when an
operator retires it; a retired release never serves again. Each change is a locked
read-modify-write of the whole file, replaced atomically: a reader sees the state before or
after a change, never a mix. A change that raises (a refused move, a check of the release
that fails) writes nothing.

The live history is a stack of the releases live before, one entry per change of the live
release, so every move can be undone by a plain rollback except a plain rollback itself:

- ``promote X`` and ``rollback --to X`` (X anything but the release a plain rollback would
  return to: a standby, a candidate, one deeper in the history) push the live release;
- a plain ``rollback`` (and ``rollback --to`` the very release it would return to) pops back
  to the latest earlier live release that is not retired, dropping what was live after it.

    live A, history []  --promote B-->  live B [A]  --rollback --to C-->  live C [A, B]
    --rollback-->  live B [A]  --rollback-->  live A []

Size: every transition of the one state file (candidate, promote, rollback, experiments, retire,
replace) under its lock; they share its validation and are tested together.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from ebr.config import Workspace
from ebr.io import atomic_write_json, file_lock
from ebr.release.record import Release, check_release_id, read_release, release_version

STATE_FILE = "state.json"
FORMAT_VERSION = 1
STATES = ("candidate", "serving", "retired")
EVENTS_KEPT = 500  # most recent changes kept in the file (the audit trail)
WEIGHT_TOLERANCE = 1e-6


def _empty() -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "live": None, "live_history": [],
            "experiment": None, "releases": {}, "events": []}  # fmt: skip


def read_state(ws: Workspace) -> dict[str, Any]:
    """The current state (an empty one before any release was recorded).

    Raises:
        ValueError: the file is not JSON or not a state (the message names the file and
            the field); nothing is ever written over such a file.
    """
    path = ws.releases / STATE_FILE
    if not path.is_file():
        return _empty()
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); restore it") from None
    return check_state(state, str(path))


def live_release(ws: Workspace) -> Release:
    """The live release, typed (its record read and checked). Raises LookupError when no
    release is live yet."""
    live = read_state(ws)["live"]
    if live is None:
        raise LookupError(f"no release is live in {ws.releases / STATE_FILE}")
    return read_release(ws, live)


def check_state(state: Any, where: str) -> dict[str, Any]:
    """``state`` if it has the shape of a state file (``where`` names it in errors)."""
    if not isinstance(state, dict):
        raise ValueError(f"{where} must hold a JSON object, got {type(state).__name__}")
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{where} has format_version {state.get('format_version')!r}")
    shapes: dict[str, type | tuple[type, ...]] = {
        "live": (str, type(None)),
        "live_history": list,
        "experiment": (dict, type(None)),
        "releases": dict,
        "events": list,
    }
    for key, kind in shapes.items():
        if not isinstance(state.get(key), kind):
            raise ValueError(f"{where}: {key!r} is missing or malformed: {state.get(key)!r:.80}")
    if not all(isinstance(r, str) for r in state["live_history"]):
        raise ValueError(f"{where}: 'live_history' must list release ids")
    for rid, entry in state["releases"].items():
        if not isinstance(entry, dict) or entry.get("state") not in STATES:
            raise ValueError(f"{where}: release {rid!r} has no state in {STATES}: {entry!r:.80}")
    return state


def _change(
    ws: Workspace, action: str, apply: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """Apply ``apply`` (state -> event details, raising to refuse) under the lock; write the
    state atomically with the event appended; returns the event."""
    with file_lock(ws.releases / f".{STATE_FILE}.lock"):
        state = read_state(ws)
        event = {"at": datetime.now(UTC).isoformat(), "action": action, **apply(state)}
        state["events"] = [*state["events"], event][-EVENTS_KEPT:]
        atomic_write_json(ws.releases / STATE_FILE, state)
    return event


def _entry(state: dict[str, Any], release_id: str) -> dict[str, Any]:
    entry = state["releases"].get(check_release_id(release_id))
    if entry is None:
        raise KeyError(f"release {release_id} is not recorded (provision it first)")
    return dict(entry)


def _set(state: dict[str, Any], release_id: str, new: str) -> None:
    entry = _entry(state, release_id)
    if entry["state"] == "retired":
        raise ValueError(f"release {release_id} is retired; retired releases never serve again")
    if entry["state"] != new:
        entry.update(state=new, since=datetime.now(UTC).isoformat())
        state["releases"][release_id] = entry


def arms(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The running experiment's arms (``[]`` without one)."""
    return list(state["experiment"]["arms"]) if state.get("experiment") else []


def serving_ids(state: dict[str, Any]) -> list[str]:
    """Releases requests may be routed to now: live and every arm, without repeats."""
    ids = [state["live"]] if state.get("live") else []
    return list(dict.fromkeys(ids + [a["release"] for a in arms(state)]))


def role(state: dict[str, Any], release_id: str) -> str:
    """``live``, ``arm:<name>``, ``standby`` (serving, neither), or the release's state."""
    if state.get("live") == release_id:
        return "live"
    for arm in arms(state):
        if arm["release"] == release_id:
            return f"arm:{arm['arm']}"
    return (
        "standby"
        if _entry(state, release_id)["state"] == "serving"
        else _entry(state, release_id)["state"]
    )


def add_candidate(ws: Workspace, release_id: str) -> dict[str, Any]:
    """Record a freshly written (and gated) release as a candidate."""

    def apply(state: dict[str, Any]) -> dict[str, Any]:
        if check_release_id(release_id) in state["releases"]:
            raise ValueError(f"release {release_id} is already recorded")
        now = datetime.now(UTC).isoformat()
        version = release_version(release_id)
        state["releases"][release_id] = {"state": "candidate", "version": version, "since": now}
        return {"release": release_id}

    return _change(ws, "candidate", apply)


def promote(ws: Workspace, release_id: str) -> dict[str, Any]:
    """Make ``release_id`` live (requests outside an experiment get it); the release live
    before stays serving (warm, the rollback target). Returns the event (``previous``)."""

    def apply(state: dict[str, Any]) -> dict[str, Any]:
        _set(state, release_id, "serving")
        previous = state["live"]
        if previous == release_id:
            return {"release": release_id, "previous": previous, "changed": False}
        if previous is not None:
            state["live_history"] = [*state["live_history"], previous][-EVENTS_KEPT:]
        state["live"] = release_id
        return {"release": release_id, "previous": previous, "changed": True}

    return _change(ws, "promote", apply)


def _step_back(state: dict[str, Any]) -> tuple[int, str] | None:
    """(position in the live history, id) of the latest earlier live release that is not
    retired (nor live now), or None."""
    history = state["live_history"]
    for i in range(len(history) - 1, -1, -1):
        rid = history[i]
        if rid != state["live"] and _entry(state, rid)["state"] != "retired":
            return i, rid
    return None


def rollback_target(state: dict[str, Any], to: str | None = None) -> str:
    """``to``, or the latest earlier live release that is not retired (ValueError: none)."""
    if to is not None:
        return check_release_id(to)
    back = _step_back(state)
    if back is None:
        raise ValueError("nothing to roll back to: no earlier live release still serves")
    return back[1]


def rollback(
    ws: Workspace, to: str | None = None, verify: Callable[[str], object] | None = None
) -> dict[str, Any]:
    """Make the release live before the current one live again (retired ones are skipped
    over), or ``to`` (any release recorded and not retired). A step back pops the history;
    a rollback to any other release pushes the live one, as a promotion does, so a plain
    rollback undoes it (module docstring). ``verify(target)`` runs under the lock before
    anything is written (raise to refuse). Returns the event: ``release``, ``previous``,
    ``changed`` and ``kind`` (``step_back`` or ``jump``)."""

    def apply(state: dict[str, Any]) -> dict[str, Any]:
        current, history = state["live"], list(state["live_history"])
        back = _step_back(state)
        target = rollback_target(state, to)
        if target == current:
            return {"release": target, "previous": current, "changed": False, "kind": None}
        if verify is not None:
            verify(target)
        _set(state, target, "serving")
        if back is not None and back[1] == target:
            kind, history = "step_back", history[: back[0]]
        else:
            kind = "jump"
            if current is not None:
                history = [*history, current][-EVENTS_KEPT:]
        state["live"], state["live_history"] = target, history
        return {"release": target, "previous": current, "changed": True, "kind": kind}

    return _change(ws, "rollback", apply)


def start_experiment(
    ws: Workspace, name: str, arm_specs: Sequence[tuple[str, str, float]], salt: str | None = None
) -> dict[str, Any]:
    """Split traffic between releases: ``arm_specs`` is ``(arm, release_id, weight)`` per arm
    (>= 2 arms, distinct names, weights > 0 summing to 1). Assignment is a hash of the member
    id (or request key) salted with ``salt`` (default ``name``): the same member keeps its arm
    for the whole experiment, across restarts. One experiment at a time."""
    specs = [(str(a), check_release_id(r), float(w)) for a, r, w in arm_specs]
    if not name or not name.strip():
        raise ValueError("an experiment needs a name")
    if (
        len(specs) < 2
        or len({a for a, _, _ in specs}) != len(specs)
        or not all(a for a, _, _ in specs)
    ):
        raise ValueError(
            f"an experiment needs >= 2 arms with distinct, non-empty names, got {specs}"
        )
    weights = [w for _, _, w in specs]
    if (
        not all(math.isfinite(w) and w > 0 for w in weights)
        or abs(sum(weights) - 1) > WEIGHT_TOLERANCE
    ):
        raise ValueError(f"arm weights must be > 0 and sum to 1, got {weights}")

    def apply(state: dict[str, Any]) -> dict[str, Any]:
        if state.get("experiment"):
            raise ValueError(
                f"experiment {state['experiment']['name']!r} is running; stop it first"
            )
        for _, release_id, _ in specs:
            _set(state, release_id, "serving")
        state["experiment"] = {
            "name": name, "salt": salt or name, "started_at": datetime.now(UTC).isoformat(),
            "arms": [{"arm": a, "release": r, "weight": w} for a, r, w in specs],
        }  # fmt: skip
        return {"experiment": name, "arms": state["experiment"]["arms"]}

    return _change(ws, "start_experiment", apply)


def stop_experiment(ws: Workspace) -> dict[str, Any]:
    """End the running experiment: every request gets the live release again."""

    def apply(state: dict[str, Any]) -> dict[str, Any]:
        running = state.get("experiment")
        if not running:
            raise ValueError("no experiment is running")
        state["experiment"] = None
        return {"experiment": running["name"], "arms": running["arms"]}

    return _change(ws, "stop_experiment", apply)


def retire(
    ws: Workspace, release_id: str, check: Callable[[dict[str, Any]], object] | None = None
) -> dict[str, Any]:
    """Retire a release that is neither live nor an arm: it never serves again.
    ``check(state)`` runs under the lock before anything is written (raise to refuse)."""

    def apply(state: dict[str, Any]) -> dict[str, Any]:
        if release_id in serving_ids(state):
            raise ValueError(f"release {release_id} is {role(state, release_id)}; it cannot retire")
        entry = _entry(state, release_id)
        if check is not None:
            check(state)
        entry.update(state="retired", since=datetime.now(UTC).isoformat())
        state["releases"][release_id] = entry
        return {"release": release_id}

    return _change(ws, "retire", apply)


def replace(ws: Workspace, old: str, new: str) -> dict[str, Any]:
    """Put ``new`` wherever ``old`` serves (live, an experiment arm) and retire ``old``: what a
    compaction does (same model, the slot's log folded into a new snapshot). ``new`` may be
    unrecorded: it is recorded in the same write, so a failure leaves no candidate behind.
    The live history keeps its order with ``new`` in ``old``'s places (it holds the same
    jobs, later), so a rollback goes to the release live before ``old``."""

    def apply(state: dict[str, Any]) -> dict[str, Any]:
        if check_release_id(new) not in state["releases"]:
            now = datetime.now(UTC).isoformat()
            state["releases"][new] = {"state": "candidate", "version": release_version(new),
                                      "since": now}  # fmt: skip
        _set(state, new, "serving")
        roles = []
        if state["live"] == old:
            state["live"], roles = new, ["live"]
        roles += [f"arm:{a['arm']}" for a in arms(state) if a["release"] == old]
        if state.get("experiment"):
            state["experiment"]["arms"] = [
                {**a, "release": new if a["release"] == old else a["release"]}
                for a in state["experiment"]["arms"]
            ]
        state["live_history"] = [new if r == old else r for r in state["live_history"]]
        entry = _entry(state, old)
        entry.update(state="retired", since=datetime.now(UTC).isoformat(), replaced_by=new)
        state["releases"][old] = entry
        return {"release": new, "replaced": old, "roles": roles}

    return _change(ws, "replace", apply)
