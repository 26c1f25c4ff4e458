"""The live history under promote / rollback / rollback --to / compaction, step by step against
an explicit expected (live, history) after each operation (``ebr.release.state``: moves push
the live release, a plain rollback pops back to the latest earlier one still serving)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ebr.config import Workspace
from ebr.release import state as st

IDS = {name: f"rel-v1-20260101T0000000000{i:02d}" for i, name in enumerate("ABCDE", start=1)}
NAME = {rid: name for name, rid in IDS.items()}


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    out = Workspace(tmp_path)
    for rid in IDS.values():
        st.add_candidate(out, rid)
    return out


def run(ws: Workspace, op: str) -> None:
    """``promote X``, ``rollback``, ``rollback X`` (--to), ``retire X``, ``replace X Y``."""
    verb, *args = op.split()
    ids = [IDS[a] for a in args]
    if verb == "promote":
        st.promote(ws, *ids)
    elif verb == "rollback":
        st.rollback(ws, ids[0] if ids else None)
    elif verb == "retire":
        st.retire(ws, *ids)
    else:
        assert verb == "replace", op
        st.replace(ws, *ids)


def where(ws: Workspace) -> tuple[str | None, str]:
    state = st.read_state(ws)
    live = NAME[state["live"]] if state["live"] else None
    return live, "".join(NAME[r] for r in state["live_history"])


SEQUENCES = {
    # The reported case: live A -> rollback --to B (never live) -> rollback: back to A.
    "to_a_candidate_is_undone": [
        ("promote A", "A", ""),
        ("rollback B", "B", "A"),
        ("rollback", "A", ""),
    ],
    "plain_rollbacks_walk_back": [
        ("promote A", "A", ""),
        ("promote B", "B", "A"),
        ("promote C", "C", "AB"),
        ("rollback", "B", "A"),
        ("rollback", "A", ""),
    ],
    # --to a release deeper in the history is a move: undone by a plain rollback, then the
    # walk back goes on through the releases live before.
    "to_deep_in_history_is_undone": [
        ("promote A", "A", ""),
        ("promote B", "B", "A"),
        ("promote C", "C", "AB"),
        ("rollback A", "A", "ABC"),
        ("rollback", "C", "AB"),
        ("rollback", "B", "A"),
        ("rollback", "A", ""),
    ],
    # --to the very release a plain rollback returns to IS that rollback (what the admin API
    # sends: it names the target it warmed).
    "to_the_previous_is_a_step_back": [
        ("promote A", "A", ""),
        ("promote B", "B", "A"),
        ("rollback A", "A", ""),
    ],
    "repeated_to": [
        ("promote A", "A", ""),
        ("rollback D", "D", "A"),
        ("rollback E", "E", "AD"),
        ("rollback C", "C", "ADE"),
        ("rollback", "E", "AD"),
        ("rollback", "D", "A"),
        ("rollback", "A", ""),
    ],
    "promote_after_rollback": [
        ("promote A", "A", ""),
        ("promote B", "B", "A"),
        ("rollback", "A", ""),
        ("promote C", "C", "A"),
        ("rollback B", "B", "AC"),
        ("rollback", "C", "A"),
        ("rollback", "A", ""),
    ],
    "retired_are_skipped": [
        ("promote A", "A", ""),
        ("promote B", "B", "A"),
        ("promote C", "C", "AB"),
        ("retire B", "C", "AB"),
        ("rollback", "A", ""),
    ],
    "promote_the_live_one_changes_nothing": [
        ("promote A", "A", ""),
        ("promote B", "B", "A"),
        ("promote B", "B", "A"),
        ("rollback B", "B", "A"),
        ("rollback", "A", ""),
    ],
    # A compaction puts its successor where the old release was, in the history too.
    "replace_keeps_the_history": [
        ("promote A", "A", ""),
        ("promote B", "B", "A"),
        ("promote A", "A", "AB"),
        ("replace A E", "E", "EB"),
        ("rollback", "B", "E"),
        ("rollback", "E", ""),
    ],
}


@pytest.mark.parametrize("steps", SEQUENCES.values(), ids=SEQUENCES.keys())
def test_history_follows_each_operation(ws: Workspace, steps: list[tuple[str, str, str]]) -> None:
    for op, live, history in steps:
        run(ws, op)
        assert where(ws) == (live, history), op
    with pytest.raises(ValueError, match="nothing to roll back to"):
        st.rollback(ws)  # every sequence ends where nothing earlier still serves


def test_refused_rollbacks_change_nothing(ws: Workspace) -> None:
    run(ws, "promote A")
    run(ws, "promote B")
    run(ws, "retire C")
    path = ws.releases / st.STATE_FILE
    before = path.read_bytes()
    refusals = [
        (IDS["C"], ValueError, "retired releases never serve again"),
        ("rel-v1-20260101T000000000099", KeyError, "is not recorded"),
        ("rel-v1-../../etc", ValueError, "release id must look like"),
    ]
    for to, error, message in refusals:
        with pytest.raises(error, match=message):
            st.rollback(ws, to)
        assert path.read_bytes() == before, to

    def refuse(target: str) -> None:
        raise ValueError(f"{target} fails its lineage check")

    for to in (None, IDS["D"]):  # a check under the lock refuses before anything is written
        with pytest.raises(ValueError, match="fails its lineage check"):
            st.rollback(ws, to, verify=refuse)
        assert path.read_bytes() == before
    event = st.rollback(ws, IDS["B"])  # the live one: a no-op
    assert not event["changed"] and where(ws) == ("B", "A")


def test_events_record_each_move(ws: Workspace) -> None:
    run(ws, "promote A")
    step = st.rollback(ws, IDS["B"])
    assert (step["kind"], step["previous"], step["release"]) == ("jump", IDS["A"], IDS["B"])
    back = st.rollback(ws)
    assert (back["kind"], back["previous"], back["release"]) == ("step_back", IDS["B"], IDS["A"])
    actions = [e["action"] for e in st.read_state(ws)["events"]]
    assert actions[-3:] == ["promote", "rollback", "rollback"]
    saved = json.loads((ws.releases / st.STATE_FILE).read_text())
    assert saved["live"] == IDS["A"] and saved["live_history"] == []
