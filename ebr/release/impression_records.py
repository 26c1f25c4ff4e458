"""The impression log's record contract and its reader: what one line of
``<workspace>/serving-log/impressions-*.jsonl`` holds (``check_record``) and every file read
back (``read_impressions``). The writer is ``ebr.release.impressions.ImpressionLog``.

    df = read_impressions(ws)        # every file; a torn last line is skipped and counted
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ebr.config import Workspace
from ebr.release.record import check_release_id

log = logging.getLogger(__name__)

KINDS = ("search", "recommendations")
COLUMNS = ("request_id", "ts", "kind", "release", "arm", "experiment", "member_id",
           "request_key", "query", "job_ids")  # fmt: skip
FILE_GLOB = "impressions-*.jsonl"


def impression_dir(ws: Workspace) -> Path:
    """Where every serving process writes its impression file: ``<root>/serving-log``."""
    return ws.root / "serving-log"


def _bad(field: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"impression record field {field!r} must be {expected}, got {value!r}")


def check_record(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``record`` with ``job_ids`` as plain ints and ``ts`` filled in (now, UTC)
    when absent; a ValueError naming the field for a missing or ill-typed one. Extra keys are
    kept. Values are not JSON-encoded here (the writer thread does that, off the request)."""
    if not isinstance(record, dict):
        raise ValueError(f"an impression record must be a dict, got {type(record).__name__}")
    missing = [k for k in COLUMNS if k not in record and k != "ts"]
    if missing:
        raise ValueError(f"impression record lacks required field(s) {missing}")
    out = dict(record)
    out.setdefault("ts", datetime.now(UTC).isoformat())
    if not isinstance(out["request_id"], str) or not out["request_id"]:
        raise _bad("request_id", "a non-empty string", out["request_id"])
    try:
        stamp = datetime.fromisoformat(out["ts"]) if isinstance(out["ts"], str) else None
    except ValueError:
        stamp = None
    if stamp is None or stamp.utcoffset() != timedelta(0):
        raise _bad("ts", "an ISO-8601 UTC string (offset +00:00 or Z)", out["ts"])
    if out["kind"] not in KINDS:
        raise _bad("kind", f"one of {KINDS}", out["kind"])
    try:
        check_release_id(out["release"])
    except ValueError as e:
        raise _bad(
            "release", "a release id like rel-v2-20261130T101500123456", out["release"]
        ) from e
    if (out["arm"] is None) != (out["experiment"] is None):
        raise _bad("arm", "set exactly when 'experiment' is", out["arm"])
    for key in ("arm", "experiment", "request_key"):
        if out[key] is not None and (not isinstance(out[key], str) or not out[key]):
            raise _bad(key, "None or a non-empty string", out[key])
    member = out["member_id"]
    if member is not None and (isinstance(member, bool) or not isinstance(member, Integral)):
        raise _bad("member_id", "None or an int", member)
    out["member_id"] = None if member is None else int(member)
    ids = out["job_ids"]
    if not isinstance(ids, Sequence | np.ndarray) or isinstance(ids, str | bytes):
        raise _bad("job_ids", "a list of ints (shown order)", ids)
    if not all(isinstance(j, Integral) and not isinstance(j, bool) and int(j) >= 0 for j in ids):
        raise _bad("job_ids", "a list of job ids >= 0 (shown order; no -1 padding)", ids)
    out["job_ids"] = [int(j) for j in ids]  # numpy ints (FAISS ids) are not JSON-encodable
    return out


def _read_file(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of one file in written order, and 1 if its last line is torn (else 0)."""
    lines = path.read_bytes().split(b"\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records, torn = [], 0
    for i, line in enumerate(lines[: last + 1]):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            if i == last:  # a crash mid-write (or a writer still writing) leaves this
                log.warning("%s: torn last line skipped (%d bytes)", path, len(line))
                torn = 1
                continue
            raise ValueError(f"{path}:{i + 1} is not a JSON record: {e}") from e
        if not isinstance(record, dict) or not set(COLUMNS) <= set(record):
            raise ValueError(f"{path}:{i + 1} is not an impression record: {line[:200]!r}")
        records.append(record)
    return records, torn


def read_impressions(source: Workspace | Path) -> pd.DataFrame:
    """Every impression record under ``impression_dir(ws)`` (or the folder ``source``): one row
    per request in file-name then written order, the columns of ``COLUMNS`` (``ts`` as UTC
    timestamps, ``member_id`` as nullable Int64, ``job_ids`` as lists) plus any extra keys.
    ``df.attrs``: ``torn_lines`` (skipped torn last lines) and ``files``. A missing folder is
    an empty log; a corrupt line that is not a file's last raises ValueError."""
    folder = impression_dir(source) if isinstance(source, Workspace) else Path(source)
    files = sorted(folder.glob(FILE_GLOB)) if folder.is_dir() else []
    records: list[dict[str, Any]] = []
    torn = 0
    for path in files:
        got, t = _read_file(path)
        records += got
        torn += t
    df = pd.DataFrame(records) if records else pd.DataFrame(columns=list(COLUMNS))
    extra = [c for c in df.columns if c not in COLUMNS]
    df = df.reindex(columns=[*COLUMNS, *extra])
    df["ts"] = pd.to_datetime(df["ts"], utc=True, format="ISO8601")
    df["member_id"] = df["member_id"].astype("Int64")
    df.attrs.update(torn_lines=torn, files=len(files))
    return df
