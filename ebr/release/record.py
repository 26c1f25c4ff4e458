"""Release records: one immutable, checksummed JSON document per release.

``releases/<id>/release.json`` is written once (``ebr.io.atomic_directory``: a reader sees the
whole record or none) and never changed; its ``checksum`` is the sha256 of the canonical JSON
of every other field, so an edited record is refused on read. What changes over a release's
life (candidate, serving, retired; live or an experiment arm) lives in the state pointer
(``ebr.release.state``), never here.

    rid = new_release_id("v2")                   # rel-v2-20261130T101500123456
    write_record(ws, {"id": rid, "model": {...}, ...})
    read_record(ws, rid)["slot"]["name"]
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ebr.config import Workspace, check_version
from ebr.io import atomic_directory, atomic_write_json

FORMAT_VERSION = 1
RECORD_FILE = "release.json"
RELEASE_ID = re.compile(r"rel-v[0-9]+-[0-9]{8}T[0-9]{12}")
# What every record holds (``provision`` fills them; ``write_record`` checks they are there).
FIELDS = (
    "id",
    "model",
    "member_interest",
    "features",
    "embeddings",
    "slot",
    "coverage",
    "evaluation",
    "gates",
    "parent",
    "created_at",
)


def check_release_id(value: str) -> str:
    """``value`` if it is a release id (``rel-<version>-<utc stamp>``), else a ValueError."""
    if not isinstance(value, str) or not RELEASE_ID.fullmatch(value):
        raise ValueError(f"release id must look like rel-v2-20261130T101500123456, got {value!r}")
    return value


def new_release_id(version: str, now: datetime | None = None) -> str:
    """A fresh id for a release of model ``version`` (unique to the microsecond)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%f")
    return f"rel-{check_version(version)}-{stamp}"


def release_version(release_id: str) -> str:
    """The model version a release id names (``rel-v2-...`` -> ``v2``)."""
    return check_release_id(release_id).split("-")[1]


def record_dir(ws: Workspace, release_id: str) -> Path:
    return ws.releases / check_release_id(release_id)


def checksum(doc: dict[str, Any]) -> str:
    """sha256 of ``doc``'s canonical JSON (sorted keys, no spaces), its ``checksum`` left out."""
    body = {k: v for k, v in doc.items() if k != "checksum"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_record(ws: Workspace, doc: dict[str, Any]) -> Path:
    """Write the release record ``doc`` (every field of ``FIELDS``) immutably; returns its
    folder. Raises FileExistsError for an id already recorded, ValueError for a bad doc."""
    missing = [f for f in FIELDS if f not in doc]
    if missing:
        raise ValueError(f"release record lacks {missing}")
    rid = check_release_id(doc["id"])
    if release_version(rid) != doc["model"]["version"]:
        raise ValueError(f"release {rid} records model {doc['model']['version']!r}")
    body = {"format_version": FORMAT_VERSION, **doc}
    body["checksum"] = checksum(body)
    target = record_dir(ws, rid)
    with atomic_directory(target) as tmp:
        atomic_write_json(tmp / RECORD_FILE, body)
    return target


def read_record(ws: Workspace, release_id: str) -> dict[str, Any]:
    """The record of ``release_id``, its checksum verified.

    Raises:
        FileNotFoundError: no such release. ValueError: unknown format, or the file no
        longer matches its checksum (edited after it was written).
    """
    path = record_dir(ws, release_id) / RECORD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no release {release_id} (no {path})")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"release record {path} is not valid JSON ({err})") from None
    if not isinstance(doc, dict) or doc.get("format_version") != FORMAT_VERSION:
        got = doc.get("format_version") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{path} has format_version {got!r}")
    if doc.get("checksum") != checksum(doc):
        raise ValueError(f"release record {path} does not match its checksum: it was modified")
    return dict(doc)


def list_releases(ws: Workspace) -> list[str]:
    """Ids of every recorded release, oldest first (ids sort by creation time per version)."""
    if not ws.releases.is_dir():
        return []
    ids = [p.name for p in ws.releases.iterdir() if RELEASE_ID.fullmatch(p.name)]
    return sorted(ids, key=lambda rid: (rid.rsplit("-", 1)[1], rid))
