"""Multi-step release operations are all or nothing: each ``ebr`` release command whose
dependency (state.json, aliases.json, a record) is unreadable fails with one line naming the
file and leaves state.json, aliases.json, the records and the slots as they were; a failure
after the first write undoes it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from ebr.config import Workspace
from ebr.index.build.aliases import alias_history, read_aliases
from ebr.index.live.slot import open_live
from ebr.release import provision as ops
from ebr.release import state as st
from ebr.release.record import RECORD_FILE, list_releases, read_release, record_dir
from tests.unit.test_releases import make_interest, make_version

STATE = Path("releases") / st.STATE_FILE
ALIASES = Path("slots") / "aliases.json"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """r1 (v1) live, r2 (v2) a candidate, a third release r3 (v1) retired-able standby; the
    live slot's log holds one record (something to compact)."""
    root = tmp_path_factory.mktemp("atomic")
    ws = Workspace(root)
    make_interest(ws, "v1")
    make_version(ws, "v1", "v1")
    r1 = ops.provision(ws, "v1").id
    r3 = ops.provision(ws, "v1").id
    make_version(ws, "v2", "v1", seed=1)
    r2 = ops.provision(ws, "v2").id
    ops.promote(ws, r3)
    ops.promote(ws, r1)
    slot = read_release(ws, r1).slot.name
    with open_live(ws.slots / slot) as live:  # re-upsert one job as it is: one log record
        row = live.snapshot.items.iloc[[0]].reset_index(drop=True)
        live.upsert(row, np.asarray(live.snapshot.vectors[[0]]))
    (root / "ids.txt").write_text(f"{r1} {r2} {r3}")
    return root


@pytest.fixture
def ws(template: Path, tmp_path: Path) -> Workspace:
    shutil.copytree(template, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def ids(ws: Workspace) -> tuple[str, str, str]:
    r1, r2, r3 = (ws.root / "ids.txt").read_text().split()
    return r1, r2, r3


def snapshot(ws: Workspace) -> dict[str, object]:
    """What an operation may change: the two mutable files' bytes and every release and slot
    entry (records, slots, logs)."""
    read = {p: (ws.root / p).read_bytes() if (ws.root / p).exists() else None
            for p in (STATE, ALIASES)}  # fmt: skip
    dirs = {d: sorted(p.name for p in (ws.root / d).iterdir()) for d in ("releases", "slots")}
    records = {
        rid: (record_dir(ws, rid) / RECORD_FILE).read_bytes()
        for rid in list_releases(ws)
        if (record_dir(ws, rid) / RECORD_FILE).is_file()
    }
    return {**read, **dirs, "records": records}


# Each command with the CLI arguments it takes (r1 live, r2 a candidate, r3 a standby).
COMMANDS: dict[str, Callable[[str, str, str], list[str]]] = {
    "provision": lambda r1, r2, r3: ["release", "provision", "--version", "v2"],
    "promote": lambda r1, r2, r3: ["release", "promote", r2],
    "rollback": lambda r1, r2, r3: ["release", "rollback"],
    "rollback_to": lambda r1, r2, r3: ["release", "rollback", "--to", r2],
    "start_experiment": lambda r1, r2, r3: [
        "experiment",
        "start",
        "x",
        f"a={r1}:0.5",
        f"b={r2}:0.5",
    ],  # fmt: skip
    "retire": lambda r1, r2, r3: ["release", "retire", r3],
    "compact": lambda r1, r2, r3: ["slot", "compact", "--release", r1],
}


def _truncate(path: Path) -> str:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return str(path)


def _remove(path: Path) -> str:
    shutil.rmtree(path)
    return str(path)


# fault -> (break the workspace, returning the path the error must name); ids as COMMANDS.
FAULTS: dict[str, Callable[[Workspace, str, str, str], str]] = {
    "state_truncated": lambda ws, r1, r2, r3: _truncate(ws.root / STATE),
    "aliases_truncated": lambda ws, r1, r2, r3: _truncate(ws.root / ALIASES),
    "target_record_missing": lambda ws, r1, r2, r3: _remove(record_dir(ws, r2)),
    "target_record_truncated": lambda ws, r1, r2, r3: _truncate(record_dir(ws, r2) / RECORD_FILE),
    "live_record_missing": lambda ws, r1, r2, r3: _remove(record_dir(ws, r1)),
    "live_record_truncated": lambda ws, r1, r2, r3: _truncate(record_dir(ws, r1) / RECORD_FILE),
    "retiring_record_missing": lambda ws, r1, r2, r3: _remove(record_dir(ws, r3)),
}
# What each command reads (a fault in anything else must not stop it).
DEPENDS = {
    "provision": ["state_truncated", "aliases_truncated", "live_record_missing",
                  "live_record_truncated"],
    "promote": ["state_truncated", "target_record_missing", "target_record_truncated"],
    "rollback": ["state_truncated"],  # its target, r3: see retiring_record_missing below
    "rollback_to": ["state_truncated", "target_record_missing", "target_record_truncated"],
    "start_experiment": ["state_truncated", "target_record_missing", "target_record_truncated",
                         "live_record_missing", "live_record_truncated"],
    "retire": ["state_truncated", "aliases_truncated", "retiring_record_missing",
               "live_record_missing", "live_record_truncated", "target_record_missing",
               "target_record_truncated"],
    "compact": ["state_truncated", "aliases_truncated", "live_record_missing",
                "live_record_truncated"],
}  # fmt: skip
DEPENDS["rollback"].append("retiring_record_missing")  # r3 is where a plain rollback goes
CASES = [(cmd, fault) for cmd, faults in DEPENDS.items() for fault in faults]


@pytest.mark.parametrize(("command", "fault"), CASES, ids=[f"{c}-{f}" for c, f in CASES])
def test_a_command_with_an_unreadable_dependency_fails_and_changes_nothing(
    ws: Workspace, command: str, fault: str
) -> None:
    r1, r2, r3 = ids(ws)
    named = FAULTS[fault](ws, r1, r2, r3)
    before = snapshot(ws)
    result = CliRunner().invoke(app, [*COMMANDS[command](r1, r2, r3), "--workspace", str(ws.root)])
    message = result.output
    assert result.exit_code == 1, message
    assert message.startswith("error: ") and "Traceback" not in message, message
    assert named in message, (named, message)  # the file (or the record's folder) is named
    assert snapshot(ws) == before, message


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_works_on_the_intact_workspace(ws: Workspace, command: str) -> None:
    """The fault matrix above is meaningful: each command succeeds without its fault."""
    r1, r2, r3 = ids(ws)
    before = snapshot(ws)
    result = CliRunner().invoke(app, [*COMMANDS[command](r1, r2, r3), "--workspace", str(ws.root)])
    assert result.exit_code == 0, result.output
    assert snapshot(ws) != before


def test_retire_after_a_failure_then_succeeds_and_removes_the_slot(ws: Workspace) -> None:
    r1, r2, r3 = ids(ws)
    aliases = ws.root / ALIASES
    good = aliases.read_bytes()
    aliases.write_text('{"aliases": {"jobs@v1": "jobs-v1-2026')  # torn (r31's fault)
    with pytest.raises(ValueError, match="aliases.json is not valid JSON"):
        ops.retire(ws, r3)
    assert st.read_state(ws)["releases"][r3]["state"] == "serving"
    aliases.write_bytes(good)
    r4 = ops.provision(ws, "v1").id  # jobs@v1 names r1's slot; r4 shares it
    assert read_release(ws, r4).slot.name == read_release(ws, r3).slot.name
    kept = ops.retire(ws, r3)
    assert kept["slot_removed"] is False and set(kept["kept_for"]) >= {r1, r4, "jobs@v1"}
    assert st.read_state(ws)["releases"][r3]["state"] == "retired"


def test_retire_removes_an_unnamed_slot_and_its_log(ws: Workspace) -> None:
    r1, r2, r3 = ids(ws)
    make_version(ws, "v2", "v1", seed=2)  # jobs@v2 moves on: nothing else names r2's slot
    slot = read_release(ws, r2).slot.name
    gone = ops.retire(ws, r2)
    assert gone["slot_removed"] is True and not (ws.slots / slot).exists()
    assert not [p for p in ws.slots.iterdir() if p.name.startswith(f".{slot}")]


def test_provision_removes_its_record_when_the_state_refuses_it(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(ws)

    def fail(*_: object) -> None:
        raise OSError("disk full while writing state.json")

    monkeypatch.setattr(st, "add_candidate", fail)
    with pytest.raises(OSError, match="disk full"):
        ops.provision(ws, "v2")
    assert snapshot(ws) == before  # no orphan record


def test_a_compaction_failing_at_its_last_step_undoes_the_others(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state write fails after the new record and the alias move: the aliases go back,
    the record and the new slot (and its log) are removed; the old release serves on."""
    from ebr.release import compaction

    r1, _, _ = ids(ws)
    before, aliases = snapshot(ws), read_aliases(ws.slots)
    history = {a: alias_history(ws.slots, a) for a in aliases}

    def fail(*_: object) -> None:
        raise OSError("disk full while writing state.json")

    monkeypatch.setattr(st, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        compaction.compact_release(ws, r1)
    after = snapshot(ws)
    assert read_aliases(ws.slots) == aliases
    assert {a: alias_history(ws.slots, a) for a in aliases} == history
    assert {k: v for k, v in after.items() if k != ALIASES} == {
        k: v for k, v in before.items() if k != ALIASES
    }
    monkeypatch.undo()
    out = compaction.compact_release(ws, r1)  # and it works once the state can be written
    assert out["compacted"] and st.read_state(ws)["live"] == out["new_release"]
    assert read_aliases(ws.slots)["jobs@v1"] == out["new_slot"]
