"""Atomic artifact writes: readers see the old artifact or the complete new one, never a half.

Files go to a temp name in the same directory, are fsynced, then renamed over the target
(rename is atomic on POSIX within one filesystem). Directories are built under a hidden temp
name and renamed into place once every file inside is durable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed (artifacts are checked against their manifests)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_file(path: Path, write: Callable[[str], object]) -> None:
    """Run ``write(tmp_path)`` on a temp file beside ``path``, fsync it, rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o644)  # mkstemp creates 0600; artifacts are meant to be read by others
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees a partial file."""
    _atomic_file(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_write_parquet(path: Path, df: pd.DataFrame) -> None:
    """Parquet via a temp file + rename (pyarrow writes in place otherwise)."""
    _atomic_file(path, lambda tmp: df.to_parquet(tmp, index=False))


@contextlib.contextmanager
def atomic_directory(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp directory; on success it is fsynced and renamed to ``target``.

    With ``overwrite=False`` an existing target is an error (artifacts are immutable).
    On any exception the temp directory is removed and ``target`` is untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not overwrite:
        raise FileExistsError(f"artifact already exists (immutable): {target}")
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        _fsync_dir(tmp)
        if not overwrite:
            # rename(2) onto an existing non-empty directory fails (ENOTEMPTY), so a writer that
            # raced us to the same immutable name is never replaced.
            os.rename(tmp, target)
        elif target.exists():
            # Replace-by-rename of a non-empty directory is impossible on POSIX; move the old
            # one aside first so the window holds either old or new, then delete the old.
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
