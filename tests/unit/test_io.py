"""Atomic artifact writes (ebr/io.py): replaced directories never vanish under a reader."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pandas as pd
import pytest

from ebr.io import atomic_directory

ROWS = 2_000  # big enough that writing the table takes a while, small enough to stay fast


def _write_table(target: Path, generation: int) -> None:
    with atomic_directory(target, overwrite=True) as tmp:
        df = pd.DataFrame({"id": range(ROWS), "generation": generation})
        df.to_parquet(tmp / "jobs.parquet", index=False)
        (tmp / "marker.txt").write_text(str(generation))


def _generations(target: Path) -> list[Path]:
    return sorted(p for p in target.parent.glob(f".{target.name}@*") if p.is_dir())


@pytest.mark.parametrize("start", ["fresh", "real_directory"])
def test_reader_always_sees_a_whole_table_while_it_is_replaced(tmp_path: Path, start: str) -> None:
    target = tmp_path / "embeddings" / "v1"
    if start == "real_directory":  # a workspace written before generations existed
        target.mkdir(parents=True)
        pd.DataFrame({"id": range(ROWS), "generation": 0}).to_parquet(target / "jobs.parquet")
        (target / "marker.txt").write_text("0")
    else:
        _write_table(target, 0)
    seen: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                df = pd.read_parquet(target / "jobs.parquet")
                # A whole table of one generation: never missing, partial or mixed.
                assert len(df) == ROWS, len(df)
                assert df["generation"].nunique() == 1
                seen.append(int(df["generation"].iloc[0]))
                int((target / "marker.txt").read_text())
            except BaseException as e:  # noqa: BLE001 - reported by the main thread below
                errors.append(e)
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for generation in range(1, 31):
            _write_table(target, generation)
    finally:
        done.set()
        reader.join(timeout=30)
    assert not errors, f"reader failed: {errors[0]!r}"
    assert seen and seen == sorted(seen), "a reader went back to an older generation"
    assert pd.read_parquet(target / "jobs.parquet")["generation"].iloc[0] == 30
    # The link is relative and the current generation plus the one before are all that remain.
    assert target.is_symlink() and not os.path.isabs(os.readlink(target))
    gens = _generations(target)
    assert len(gens) == 2 and target.resolve() in [g.resolve() for g in gens]
    assert not list(target.parent.glob(".v1.*")), "temp dirs or links left behind"


def test_a_copied_or_moved_workspace_keeps_its_tables(tmp_path: Path) -> None:
    target = tmp_path / "ws" / "embeddings" / "v1"
    _write_table(target, 1)
    _write_table(target, 2)
    moved = tmp_path / "moved"
    os.rename(tmp_path / "ws", moved)
    assert (moved / "embeddings" / "v1" / "marker.txt").read_text() == "2"
    linked = Path(shutil.copytree(moved, tmp_path / "linked", symlinks=True))
    assert (linked / "embeddings" / "v1").is_symlink()
    assert (linked / "embeddings" / "v1" / "marker.txt").read_text() == "2"
    copied = Path(shutil.copytree(moved, tmp_path / "copied"))  # follows links: real folders
    assert (copied / "embeddings" / "v1" / "marker.txt").read_text() == "2"
    _write_table(copied / "embeddings" / "v1", 3)  # the copy's real folder migrates
    assert (copied / "embeddings" / "v1" / "marker.txt").read_text() == "3"
    assert (moved / "embeddings" / "v1" / "marker.txt").read_text() == "2"


def test_a_failed_replace_leaves_the_old_table_and_no_debris(tmp_path: Path) -> None:
    target = tmp_path / "v1"
    _write_table(target, 1)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(target, overwrite=True) as tmp:
            (tmp / "jobs.parquet").write_bytes(b"half")
            raise RuntimeError("boom")
    assert (target / "marker.txt").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_immutable_directories_are_never_replaced(tmp_path: Path) -> None:
    target = tmp_path / "models" / "v1"
    with atomic_directory(target) as tmp:
        (tmp / "model.json").write_text("{}")
    assert target.is_dir() and not target.is_symlink()
    with pytest.raises(FileExistsError, match="immutable"):
        with atomic_directory(target):
            pass
    _write_table(tmp_path / "embeddings" / "v1", 1)
    with pytest.raises(FileExistsError, match="immutable"):  # a replaceable link is no exception
        with atomic_directory(tmp_path / "embeddings" / "v1"):
            pass
