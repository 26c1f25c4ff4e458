"""Aliases: moves with history, a compaction's retarget and its undo, atomic flips under
concurrent queries, and slot writes that a SIGKILL interrupts.

Run: ``pytest -q tests/unit/test_aliases.py``
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ebr.config import IndexConfig
from ebr.index.build import writer as writer_module
from ebr.index.build.aliases import (
    alias_history,
    point,
    read_aliases,
    resolve_alias,
    restore,
    retarget,
)
from ebr.index.build.writer import write_slot
from ebr.index.live.slot import open_live
from ebr.index.query.slot import load_slot

D = 16


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def items(n: int, first_id: int) -> pd.DataFrame:
    """``n`` jobs with ids after ``first_id`` (ids start at 1: ``ebr.ids``)."""
    return pd.DataFrame({"job_id": np.arange(first_id + 1, first_id + n + 1), "title": ["t"] * n})


def make_slot(slots: Path, name: str, first_id: int, n: int = 300) -> Path:
    vectors = unit_rows(n, D, seed=first_id)
    return write_slot(slots, name, vectors, items(n, first_id), "v1", IndexConfig(kind="flat"))


def test_point_returns_previous_targets_and_keeps_history(tmp_path: Path):
    for i, name in enumerate("abc"):
        make_slot(tmp_path, name, first_id=1000 * i)
    assert point(tmp_path, "a", ["jobs@v1"]) == {"jobs@v1": None}
    assert point(tmp_path, "b", ["jobs@v1", "jobs@v2"]) == {"jobs@v1": "a", "jobs@v2": None}
    assert point(tmp_path, "b", ["jobs@v1"]) == {"jobs@v1": "b"}  # already there: no history
    assert point(tmp_path, "c", ["jobs@v1"]) == {"jobs@v1": "b"}
    assert alias_history(tmp_path, "jobs@v1") == ["a", "b"]
    assert resolve_alias(tmp_path, "jobs@v1") == tmp_path / "c"
    before = (tmp_path / "aliases.json").read_text()
    with pytest.raises(ValueError, match="unknown slot"):
        point(tmp_path, "nope", ["jobs@v1"])
    with pytest.raises(ValueError, match="alias must match"):
        point(tmp_path, "a", ["jobs@v1", "jobs v1"])  # one bad alias: none moves
    assert (tmp_path / "aliases.json").read_text() == before
    with pytest.raises(KeyError, match="unknown alias"):
        resolve_alias(tmp_path, "jobs@v3")


def test_retarget_follows_a_compaction_and_restore_undoes_it(tmp_path: Path):
    for i, name in enumerate("abc"):
        make_slot(tmp_path, name, first_id=1000 * i)
    point(tmp_path, "a", ["jobs@v1", "jobs@old"])
    point(tmp_path, "b", ["jobs@v2"])
    moved = retarget(tmp_path, "a", "c")
    assert moved == ["jobs@old", "jobs@v1"]
    assert read_aliases(tmp_path) == {"jobs@v1": "c", "jobs@old": "c", "jobs@v2": "b"}
    point(tmp_path, "b", ["jobs@old"])  # moved on since: restore leaves it alone
    restore(tmp_path, moved, "a", "c")
    assert read_aliases(tmp_path) == {"jobs@v1": "a", "jobs@old": "b", "jobs@v2": "b"}
    assert alias_history(tmp_path, "jobs@v1") == []
    with pytest.raises(ValueError, match="unknown slot"):
        retarget(tmp_path, "a", "nope")


def test_old_flat_aliases_file_is_read_and_upgraded(tmp_path: Path):
    make_slot(tmp_path, "a", 0)
    make_slot(tmp_path, "b", 1000)
    (tmp_path / "aliases.json").write_text(json.dumps({"jobs@v2": "a", "jobs@v1": "a"}))
    assert read_aliases(tmp_path) == {"jobs@v2": "a", "jobs@v1": "a"}
    point(tmp_path, "b", ["jobs@v2"])
    raw = json.loads((tmp_path / "aliases.json").read_text())
    assert raw == {"aliases": {"jobs@v2": "b", "jobs@v1": "a"}, "history": {"jobs@v2": ["a"]}}


def test_malformed_aliases_file_is_an_error(tmp_path: Path):
    (tmp_path / "aliases.json").write_text(json.dumps({"aliases": {"x": 1}}))
    with pytest.raises(ValueError, match="must hold"):
        read_aliases(tmp_path)


def test_moving_an_alias_never_fails_an_in_flight_query(tmp_path: Path):
    slot_a, slot_b = make_slot(tmp_path, "a", 0, 2000), make_slot(tmp_path, "b", 10_000, 2000)
    queries = unit_rows(4, D, seed=99)
    # What each complete slot answers: a reader's result must equal one of these exactly.
    expected = {
        p.name: open_live(p, writable=False).search(queries, 5)[1] for p in (slot_a, slot_b)
    }
    point(tmp_path, "a", ["jobs@v1"])
    stop, failures, seen = threading.Event(), [], {"a": 0, "b": 0}

    def reader() -> None:
        while not stop.is_set():
            try:
                live = open_live(resolve_alias(tmp_path, "jobs@v1"), writable=False)
                slot = live.snapshot
                _, job_ids = live.search(queries, 5)
                if not np.array_equal(job_ids, expected[slot.name]):
                    failures.append(f"{slot.name} answered {job_ids.tolist()}")
                seen[slot.name] += 1
            except Exception as exc:  # any failure at all is what this test is about
                failures.append(repr(exc))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(150):
            point(tmp_path, "b" if i % 2 else "a", ["jobs@v1"])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert seen["a"] > 0 and seen["b"] > 0, seen  # both targets were really served
    assert not list(tmp_path.glob(".aliases.json.*.tmp"))  # no temp file left behind


def _write_and_hang(slots: str, ready: multiprocessing.synchronize.Event) -> None:
    """Child: write a slot, but stop for good once its data files are on disk (pre-manifest)."""

    def hang(path: Path) -> str:
        ready.set()
        signal.pause()  # the parent SIGKILLs us here, mid-write
        return ""

    writer_module.sha256_file = hang  # type: ignore[assignment]
    n = 50_000
    write_slot(Path(slots), "new", unit_rows(n, D, 5), items(n, 0), "v2", IndexConfig(kind="flat"))


def test_sigkill_during_write_slot_leaves_old_slot_and_alias_serving(tmp_path: Path):
    old = make_slot(tmp_path, "old", 0)
    point(tmp_path, "old", ["jobs@v1"])
    ctx = multiprocessing.get_context("spawn")  # no fork of a process with OpenMP threads
    ready = ctx.Event()
    child = ctx.Process(target=_write_and_hang, args=(str(tmp_path), ready))
    child.start()
    try:
        assert ready.wait(60), "child never reached the write"
        temp_dirs = [p for p in tmp_path.iterdir() if p.name.startswith(".new.")]
        assert temp_dirs and (temp_dirs[0] / "vectors.npy").is_file()  # really mid-write
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.join(30)
    assert child.exitcode == -signal.SIGKILL
    assert not (tmp_path / "new").exists()  # nothing under the new name, not even empty
    with pytest.raises(ValueError, match="unknown slot"):
        point(tmp_path, "new", ["jobs@v1"])
    with pytest.raises(ValueError, match="must match"):  # the hidden temp dir is not a slot name
        point(tmp_path, temp_dirs[0].name, ["jobs@v1"])
    slot = load_slot(resolve_alias(tmp_path, "jobs@v1"), verify=True)
    live = open_live(slot.path, writable=False)
    assert slot.path == old and live.search(unit_rows(1, D, 1), 3)[1].min() >= 0
