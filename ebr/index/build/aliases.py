"""Slot aliases: named pointers (``jobs@v1``: the newest slot built for model v1) to
immutable slots, with history.

``slots_dir/aliases.json`` is the only mutable file among the slots::

    {"aliases": {"jobs@v1": "jobs-v1-...", ...},
     "history": {"jobs@v1": ["jobs-v1-...", ...]}}     # previous targets, oldest first

An alias says which slot a build produced last (``ebr.release.slots.build_job_slot``), so
``ebr.release.provision`` can pin it by default, and follows a compaction's successor
(``retarget``). It never says what serves: a release names its slot, and
``releases/state.json`` names the live release (``ebr.release.state``).

Every change is a locked read-modify-write followed by an atomic rename (``ebr.io``), so a
reader sees the old map or the new one, never a mix; slots are never deleted by a move, so a
reader that resolved the old target keeps working. The older flat format
(``{"jobs@v1": "jobs-v1-..."}``) is still read; the next write upgrades it.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ebr.index.query.slot import MANIFEST_FILE, check_name
from ebr.io import atomic_write_json, file_lock

ALIASES_FILE = "aliases.json"
ALIAS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")  # 'jobs@v1'
HISTORY_LIMIT = 50  # previous targets kept per alias (what an operator can look back on)


def _aliases_lock(slots_dir: Path) -> contextlib.AbstractContextManager[None]:
    # aliases.json is read-modify-written; the lock stops two moves losing one update.
    return file_lock(slots_dir / f".{ALIASES_FILE}.lock")


def _is_str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def _read_state(slots_dir: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(alias -> slot name, alias -> previous slot names oldest first) from aliases.json."""
    path = Path(slots_dir) / ALIASES_FILE
    if not path.exists():
        return {}, {}
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); restore it") from None
    if _is_str_map(raw):  # the flat format written before history existed
        return dict(raw), {}
    aliases = raw.get("aliases") if isinstance(raw, dict) else None
    history = raw.get("history", {}) if isinstance(raw, dict) else None
    history_ok = isinstance(history, dict) and all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in history.values()
    )
    if not _is_str_map(aliases) or not history_ok:
        raise ValueError(
            f'{path} must hold {{"aliases": {{alias: slot}}, "history": {{alias: [slot, ...]}}}} '
            "or a flat JSON object of alias -> slot name"
        )
    assert isinstance(aliases, dict) and isinstance(history, dict)  # narrowed above, for mypy
    return dict(aliases), {k: list(v) for k, v in history.items()}


def _write_state(slots_dir: Path, aliases: dict[str, str], history: dict[str, list[str]]) -> None:
    history = {a: h[-HISTORY_LIMIT:] for a, h in history.items() if h}
    atomic_write_json(slots_dir / ALIASES_FILE, {"aliases": aliases, "history": history})


def _check_slot(slots_dir: Path, slot_name: str) -> None:
    check_name(slot_name, "slot name")
    if not (slots_dir / slot_name / MANIFEST_FILE).is_file():
        # Only complete slots have a manifest (it is written last, inside the renamed dir).
        known = sorted(p.parent.name for p in slots_dir.glob(f"*/{MANIFEST_FILE}"))
        raise ValueError(f"unknown slot {slot_name!r} in {slots_dir}; known slots: {known}")


def read_aliases(slots_dir: Path) -> dict[str, str]:
    """The alias -> slot name map (empty when no alias was ever set)."""
    return _read_state(Path(slots_dir))[0]


def alias_history(slots_dir: Path, alias: str) -> list[str]:
    """Slot names ``alias`` pointed at before its current target, oldest first."""
    return _read_state(Path(slots_dir))[1].get(alias, [])


def point(slots_dir: Path, slot_name: str, aliases: Sequence[str]) -> dict[str, str | None]:
    """Point every alias of ``aliases`` at the complete slot ``slot_name`` in one atomic
    write, each previous target pushed onto its history; -> alias -> previous target (None:
    unset). Pointing an alias at its current target changes nothing.

    Raises:
        ValueError: a malformed alias, or ``slot_name`` is not a complete slot in
        ``slots_dir`` (aliases.json is left as it was).
    """
    slots_dir = Path(slots_dir)
    for alias in aliases:
        check_name(alias, "alias", ALIAS_NAME)
    _check_slot(slots_dir, slot_name)
    out: dict[str, str | None] = {}
    with _aliases_lock(slots_dir):
        current, history = _read_state(slots_dir)
        for alias in aliases:
            previous = out[alias] = current.get(alias)
            if previous != slot_name:
                if previous is not None:
                    history.setdefault(alias, []).append(previous)
                current[alias] = slot_name
        if any(out[a] != slot_name for a in aliases):
            _write_state(slots_dir, current, history)
    return out


def retarget(slots_dir: Path, old_slot: str, new_slot: str) -> list[str]:
    """Point every alias now naming ``old_slot`` at ``new_slot`` (a compaction's successor),
    in one atomic write; -> the aliases moved (``restore`` undoes it)."""
    slots_dir = Path(slots_dir)
    _check_slot(slots_dir, new_slot)
    with _aliases_lock(slots_dir):
        aliases, history = _read_state(slots_dir)
        moved = sorted(a for a, target in aliases.items() if target == old_slot)
        for alias in moved:
            history.setdefault(alias, []).append(old_slot)
            aliases[alias] = new_slot
        if moved:
            _write_state(slots_dir, aliases, history)
    return moved


def restore(slots_dir: Path, moved: Sequence[str], old_slot: str, new_slot: str) -> None:
    """Undo ``retarget``: each of ``moved`` still naming ``new_slot`` goes back to
    ``old_slot`` and its history loses that step (aliases moved on since are left alone)."""
    slots_dir = Path(slots_dir)
    with _aliases_lock(slots_dir):
        aliases, history = _read_state(slots_dir)
        back = [
            a for a in moved if aliases.get(a) == new_slot and history.get(a, [""])[-1] == old_slot
        ]
        for alias in back:
            history[alias].pop()
            aliases[alias] = old_slot
        if back:
            _write_state(slots_dir, aliases, history)


def resolve_alias(slots_dir: Path, alias: str) -> Path:
    """The slot directory ``alias`` points at."""
    slots_dir = Path(slots_dir)
    aliases = read_aliases(slots_dir)
    if alias not in aliases:
        raise KeyError(f"unknown alias {alias!r} in {slots_dir}; known aliases: {sorted(aliases)}")
    return slots_dir / aliases[alias]
