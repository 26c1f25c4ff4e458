"""Where streamed changes go: every release that may serve (candidate or serving, not retired).

A streaming job writes each change into the slot and the Feast views of every such release, so
an experiment's arms, a rollback target and a candidate waiting for promotion all stay as fresh
as live (dual-write). Releases sharing a model version share its Feast views; releases sharing a
slot share its log: the job writes each once.
"""

from __future__ import annotations

from dataclasses import dataclass

from ebr.config import Workspace
from ebr.release.record import read_release
from ebr.release.state import read_state


@dataclass(frozen=True)
class Target:
    """What a release pins that a streamed change must reach."""

    release_id: str
    version: str  # the two-tower model: item tower for jobs, request tower for members
    interest_version: str | None  # the co-trained member-interest model
    slot: str  # the slot whose log takes job upserts and tombstones


def write_targets(ws: Workspace) -> list[Target]:
    """Every release not retired, oldest first (records are checked: an edited one raises)."""
    out = []
    for release_id, entry in read_state(ws)["releases"].items():
        if entry["state"] == "retired":
            continue
        release = read_release(ws, release_id)
        out.append(Target(release_id, release.version, release.interest_version, release.slot.name))
    return sorted(out, key=lambda t: t.release_id)
