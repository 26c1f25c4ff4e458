"""Slot aliases: named pointers (``jobs@live``, ``jobs@v1``) to immutable slots, with history.

``slots_dir/aliases.json`` is the only mutable file among the slots::

    {"aliases": {"jobs@live": "jobs-v2-...", ...},
     "history": {"jobs@live": ["jobs-v1-...", ...]}}     # previous targets, oldest first

Every change is a locked read-modify-write followed by an atomic rename (``ebr.io``), so a
reader sees the old map or the new one, never a mix. Slots are never deleted by a promotion, so
a query that resolved the old target keeps working after the flip: promote and rollback cannot
fail an in-flight query. The older flat format (``{"jobs@live": "jobs-v1-..."}``) is still read;
the next write upgrades it.

    python -c "from ebr.index.build.aliases import promote, rollback; \
print(promote('var/demo/slots', 'jobs@live', 'jobs-v2-...'))"
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ebr.index.query.slot import MANIFEST_FILE, check_name
from ebr.io import atomic_write_json, file_lock

ALIASES_FILE = "aliases.json"
ALIAS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")  # 'jobs@live', 'jobs@v1'
HISTORY_LIMIT = 50  # previous targets kept per alias; rollback rarely goes back further


def _aliases_lock(slots_dir: Path) -> contextlib.AbstractContextManager[None]:
    # aliases.json is read-modify-written; the lock stops two promotions losing one update.
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


Allow = Callable[[str | None], bool]  # current target -> may the alias move


def _move_all(
    slots_dir: Path, slot_name: str, moves: Sequence[tuple[str, Allow]]
) -> list[tuple[bool, str | None]]:
    """Under the lock, in one write: point each alias of ``moves`` at ``slot_name`` if its
    ``allow(current target)``, pushing the old target onto its history; -> per alias (moved
    or already there, previous target). Any error leaves aliases.json as it was."""
    slots_dir = Path(slots_dir)
    for alias, _ in moves:
        check_name(alias, "alias", ALIAS_NAME)
    _check_slot(slots_dir, slot_name)
    out: list[tuple[bool, str | None]] = []
    with _aliases_lock(slots_dir):
        aliases, history = _read_state(slots_dir)
        changed = False
        for alias, allow in moves:
            previous = aliases.get(alias)
            if previous != slot_name and not allow(previous):
                out.append((False, previous))
                continue
            if previous != slot_name:
                if previous is not None:
                    history.setdefault(alias, []).append(previous)
                aliases[alias], changed = slot_name, True
            out.append((True, previous))
        if changed:
            _write_state(slots_dir, aliases, history)
    return out


def _move(slots_dir: Path, alias: str, slot_name: str, allow: Allow) -> tuple[bool, str | None]:
    """``_move_all`` for one alias."""
    return _move_all(slots_dir, slot_name, [(alias, allow)])[0]


def point(
    slots_dir: Path, slot_name: str, aliases: Sequence[str], refreshed: Sequence[str] = ()
) -> dict[str, bool]:
    """Point every alias of ``aliases`` at ``slot_name`` (as ``promote``) and each of
    ``refreshed`` as ``refresh`` does, in one atomic write; -> alias -> points there now."""
    version = slot_model_version(Path(slots_dir), slot_name)

    def same_version(current: str | None) -> bool:
        return current is None or slot_model_version(Path(slots_dir), current) == version

    moves = [(a, _always) for a in aliases] + [(a, same_version) for a in refreshed]
    done = _move_all(slots_dir, slot_name, moves)
    return {alias: ok for (alias, _), (ok, _) in zip(moves, done, strict=True)}


def _always(_: str | None) -> bool:
    return True


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


def promote(slots_dir: Path, alias: str, slot_name: str) -> str | None:
    """Point ``alias`` at the complete slot ``slot_name``; return its previous target (or None).

    The previous target is pushed onto the alias's history so ``rollback`` can return to it.
    Re-promoting the current target changes nothing.

    Raises:
        ValueError: a malformed alias, or ``slot_name`` is not a complete slot in ``slots_dir``.
    """
    return _move(slots_dir, alias, slot_name, _always)[1]


def refresh(slots_dir: Path, alias: str, slot_name: str) -> bool:
    """Point ``alias`` at ``slot_name`` only if it is unset or already serves that slot's model
    version (a compare-and-swap under the aliases lock); True when it points there now.

    A scheduled re-embedding refreshes the live version's slot with this, so it can never
    move ``live`` to another version, not even back to one a promotion just replaced."""
    return point(slots_dir, slot_name, [], [alias])[alias]


def slot_model_version(slots_dir: Path, slot_name: str) -> str | None:
    """The model version in ``slot_name``'s manifest (None when the slot is gone)."""
    manifest = slots_dir / slot_name / MANIFEST_FILE
    return json.loads(manifest.read_text()).get("model_version") if manifest.is_file() else None


def set_alias(slots_dir: Path, alias: str, slot_name: str) -> None:
    """Point ``alias`` at the existing slot ``slot_name`` (``promote`` without the return)."""
    promote(slots_dir, alias, slot_name)


def rollback(slots_dir: Path, alias: str) -> str:
    """Point ``alias`` back at its previous target and return that slot's name.

    The history is a stack: rolling back twice goes back two promotions.

    Raises:
        KeyError: unknown alias. ValueError: no earlier target to return to, or that slot is
        gone (the alias is left unchanged).
    """
    slots_dir = Path(slots_dir)
    with _aliases_lock(slots_dir):
        aliases, history = _read_state(slots_dir)
        if alias not in aliases:
            raise KeyError(f"unknown alias {alias!r} in {slots_dir}; known: {sorted(aliases)}")
        past = history.get(alias, [])
        if not past:
            raise ValueError(
                f"alias {alias!r} has no previous target to roll back to "
                f"(it points at {aliases[alias]!r} and has no history)"
            )
        target = past.pop()
        _check_slot(slots_dir, target)
        aliases[alias] = target
        _write_state(slots_dir, aliases, history)
    return target


def resolve_alias(slots_dir: Path, alias: str) -> Path:
    """The slot directory ``alias`` points at."""
    slots_dir = Path(slots_dir)
    aliases = read_aliases(slots_dir)
    if alias not in aliases:
        raise KeyError(f"unknown alias {alias!r} in {slots_dir}; known aliases: {sorted(aliases)}")
    return slots_dir / aliases[alias]
