"""Private copies of a built workspace, for tests that write to it."""

from __future__ import annotations

import shutil
from pathlib import Path

from ebr.config import Workspace
from ebr.versions import FEATURE_VERSIONS_FILE, feature_versions


def copy_workspace(src: Path, dst: Path, publish: bool = True) -> Workspace:
    """A copy of ``src`` with its own Feast registry and online store.

    Feast's registry records the sqlite online store by absolute path: a copied registry would
    make every Feast write in the copy land in the ORIGINAL workspace's online store. So the
    copy starts without them and, with ``publish``, re-publishes each version ``src`` serves.
    """
    from feature_repo.store import publish as publish_version

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("serving-log"))
    for name in ("registry.db", "online.db"):
        (dst / "feature_repo" / "data" / name).unlink(missing_ok=True)
    if publish:
        versions = feature_versions(dst / "feature_repo" / FEATURE_VERSIONS_FILE)
        for version in sorted(versions, key=lambda v: int(v[1:])):
            publish_version(dst, version)
    return Workspace(dst)
