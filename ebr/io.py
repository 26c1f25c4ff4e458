"""Atomic artifact writes: readers see the old artifact or the complete new one, never a half.

Files go to a temp name in the same directory, are fsynced, then renamed over the target
(rename is atomic on POSIX within one filesystem). Directories are built under a hidden temp
name and renamed into place once every file inside is durable.

A directory that is *replaced* (``atomic_directory(target, overwrite=True)``, e.g.
``embeddings/<version>``) cannot be renamed over a non-empty directory, and moving the old one
aside first leaves a moment with no table at all. So a replaceable ``target`` is a relative
symlink to an immutable generation beside it, ``.<name>@<utc>-<rand>/``, and a replace swaps
the link with rename(2): a reader sees the old generation or the new one, never neither. The
generation the link pointed to before is kept until the next replace (a reader that resolved
the link just before a swap finishes its reads); older ones are removed. A reader that needs
several files of one generation resolves the link once (``Path.resolve()``). One writer per
target at a time (a run per version): a concurrent writer's generation may be pruned.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
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


def _fsync_tree(root: Path) -> None:
    for child in root.rglob("*"):
        if child.is_file():
            with open(child, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(root)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the ``with`` body:
    serialises read-modify-write cycles of one small mutable file across processes (two
    concurrent promotions must not lose one update). Released when the body exits, however."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, exception or not
        yield


@contextlib.contextmanager
def atomic_directory(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp directory; on success it is fsynced and renamed to ``target``.

    With ``overwrite=False`` an existing target is an error (artifacts are immutable).
    With ``overwrite=True`` the directory becomes a new generation and ``target`` a symlink
    swapped onto it atomically (module docstring). On any exception the temp directory is
    removed and ``target`` is untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(target) and not overwrite:
        raise FileExistsError(f"artifact already exists (immutable): {target}")
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; artifacts are meant to be read by others
        _fsync_tree(tmp)
        if overwrite:
            _publish_generation(tmp, target)
        else:
            # rename(2) onto an existing non-empty directory fails (ENOTEMPTY), so a writer that
            # raced us to the same immutable name is never replaced.
            os.rename(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _generation(target: Path, tag: str = "") -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return target.with_name(f".{target.name}@{stamp}{tag}-{secrets.token_hex(4)}")


def _publish_generation(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to a new generation and point the ``target`` symlink at it atomically."""
    gen = _generation(target)
    os.rename(tmp, gen)
    link = target.with_name(f".{target.name}.{secrets.token_hex(4)}.link")
    # Relative, so a workspace that is moved or copied with its links stays valid.
    os.symlink(gen.name, link)
    try:
        if os.path.islink(target) or not os.path.lexists(target):
            previous = os.readlink(target) if os.path.islink(target) else None
            os.replace(link, target)  # rename(2) over a symlink: atomic
        else:
            previous = _migrate(link, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        shutil.rmtree(gen, ignore_errors=True)
        raise
    _prune(target, keep={gen.name, *([previous] if previous else [])})


def _migrate(link: Path, target: Path) -> str:
    """Replace ``target``, a real directory written before generations, by the symlink
    ``link``; the old directory becomes the previous generation (its name is returned)."""
    legacy = _generation(target, "-legacy")
    if _exchange(link, target):  # atomic: target is the link, `link` now names the old dir
        os.rename(link, legacy)
    else:
        # No renameat2 (not Linux, or a filesystem without RENAME_EXCHANGE): a one-time gap
        # of two renames while the old directory moves aside.
        os.rename(target, legacy)
        os.replace(link, target)
    return legacy.name


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the names ``a`` and ``b`` (Linux renameat2 RENAME_EXCHANGE); False
    where that is not available."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _prune(target: Path, keep: set[str]) -> None:
    """Remove generations of ``target`` other than ``keep`` and the one it points to now."""
    with contextlib.suppress(OSError):
        keep = keep | {os.readlink(target)}  # a concurrent writer may have swapped since
    for gen in target.parent.glob(f".{target.name}@*"):
        if gen.name not in keep and gen.is_dir() and not gen.is_symlink():
            shutil.rmtree(gen, ignore_errors=True)
