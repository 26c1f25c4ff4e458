"""Index slots: immutable directories holding one FAISS index and the jobs it was built from.

Layout of ``slots_dir``::

    <slot-name>/index.faiss      FAISS index; id i is row i of items.parquet
    <slot-name>/items.parquet    job_id (int64) + display columns (title, company, city, ...)
    <slot-name>/vectors.npy      float32 [n, d]: the exact vectors, row i = FAISS id i
    <slot-name>/terms/           BM25 index over the items' text (``ebr.index.query.terms``)
    <slot-name>/manifest.json    model version, effective index params, recall@10, checksums
    <slot-name>.log/             live upserts/deletes on top of the slot (``ebr.index.live.slot``)
    aliases.json                 alias -> slot name + history (``ebr.index.build.aliases``)

A slot is written once (``ebr.index.build.writer``) under a temp name and renamed into place
(``ebr.io.atomic_directory``), so a reader sees a complete slot or none; this module reads it.
Serving follows an alias (``ebr.index.build.aliases``); a new model version or a compaction
gets a new slot and flipping the alias is the release (and the rollback).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd

from ebr.index.query import device
from ebr.index.query.terms import TERMS_DIR, TermIndex
from ebr.io import sha256_file

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.parquet"
VECTORS_FILE = "vectors.npy"  # the exact vectors: filtered exact scans, live merges, re-tuning
MANIFEST_FILE = "manifest.json"
DATA_FILES = (INDEX_FILE, ITEMS_FILE, VECTORS_FILE)
# No separators, no leading dot (that is how temp dirs are named).
SLOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(value: str, what: str, pattern: re.Pattern[str] = SLOT_NAME) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{what} must match {pattern.pattern}, got {value!r}")
    return value


def item_places(items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lat, lon) float64 (NaN: unknown or no column) and remote bool (null: False) of
    ``items`` rows."""
    n = len(items)
    lat, lon = (
        items[c].to_numpy(np.float64, na_value=np.nan) if c in items else np.full(n, np.nan)
        for c in ("lat", "lon")
    )
    remote = np.zeros(n, dtype=bool)
    if "remote" in items:
        remote = items["remote"].astype("boolean").fillna(False).to_numpy(bool)
    return lat, lon, remote


@dataclass(frozen=True, eq=False)
class Slot:
    """A loaded slot. Treat it as read-only: it is shared by every request that searches it."""

    path: Path
    manifest: dict[str, Any]
    items: pd.DataFrame  # row i = FAISS id i
    index: faiss.Index
    vectors: np.ndarray  # [n, d] float32, memory-mapped; row i = FAISS id i
    terms: TermIndex | None = None  # BM25 over the items' text; None in slots built before it
    _job_ids: np.ndarray = field(init=False, repr=False)  # [n] int64, FAISS id -> job_id
    _by_job: pd.DataFrame = field(init=False, repr=False)  # items indexed by job_id
    _row_of: pd.Index = field(init=False, repr=False)  # job_id -> row
    _plain: dict[str, list[Any]] | None = field(init=False, repr=False, default=None)
    _open: np.ndarray | None = field(init=False, repr=False, default=None)
    _places: tuple[np.ndarray, np.ndarray, np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_job_ids", self.items["job_id"].to_numpy(np.int64))
        object.__setattr__(self, "_by_job", self.items.set_index("job_id", drop=False))
        object.__setattr__(self, "_row_of", pd.Index(self._job_ids))
        object.__setattr__(self, "_open", open_mask(self.items))
        object.__setattr__(self, "_places", item_places(self.items))

    @property
    def open_rows(self) -> np.ndarray | None:
        """[n] bool, read-only: rows of open jobs (``active`` true); None when every row is
        open (slots built from the catalogue hold open jobs only, ``ebr.release.slots``).
        A closed row is never returned by a search (``ebr.index.query.search``)."""
        return self._open

    @property
    def places(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lat, lon) float64 [n] (NaN: unknown) and remote bool [n] by row: where a signed-in
        search's commute decay reads a job (``ebr.index.query.personal``)."""
        return self._places

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def model_version(self) -> str:
        return str(self.manifest["model_version"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def job_ids(self) -> np.ndarray:
        """[n] int64, row (= FAISS id) -> job_id. Read-only by convention, like the slot."""
        return self._job_ids

    def row_positions(self, job_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """int64 [m]: the row (= FAISS id) of each of ``job_ids``, -1 for one not in the slot."""
        return self._row_of.get_indexer(np.asarray(job_ids, dtype=np.int64))

    def records(self, job_ids: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """Display records (every item column, plain Python values, a null as None) of
        ``job_ids``, all in the slot, in that order: a response without pandas per request
        (the columns are converted once, on first use)."""
        if self._plain is None:
            object.__setattr__(self, "_plain", plain_columns(self.items))
        columns = self._plain
        assert columns is not None
        positions = self.row_positions(job_ids)
        if (positions < 0).any():
            missing = np.asarray(job_ids)[positions < 0][:10].tolist()
            raise KeyError(f"job_ids not in slot {self.name}: {missing}")
        rows = positions.tolist()
        return [{c: v[row] for c, v in columns.items()} for row in rows]

    def rows(self, job_ids: Sequence[int] | np.ndarray) -> pd.DataFrame:
        """Display rows (job_id + display columns) for ``job_ids``, in that order.

        Negative ids (search padding) are skipped; an id not in this slot is a KeyError.
        """
        ids = np.asarray(job_ids, dtype=np.int64).ravel()
        ids = ids[ids >= 0]
        missing = ids[~np.isin(ids, self._job_ids)]
        if len(missing):
            raise KeyError(f"job_ids not in slot {self.name}: {missing[:10].tolist()}")
        return self._by_job.loc[ids].reset_index(drop=True)


def open_mask(items: pd.DataFrame) -> np.ndarray | None:
    """[len(items)] bool, frozen: the rows whose ``active`` is true (a null is closed);
    None when all are, or the items have no ``active`` column (every job open)."""
    if "active" not in items.columns:
        return None
    mask = np.array(items["active"].astype("boolean").fillna(False), dtype=bool)  # own buffer
    if mask.all():
        return None
    mask.flags.writeable = False  # frozen: the planner caches what it derives from it
    return mask


def plain_columns(frame: pd.DataFrame) -> dict[str, list[Any]]:
    """Each column of ``frame`` as plain Python values, nulls (NaN, NaT, None) as None: the
    one null policy of a response."""
    out = {}
    for name in frame.columns:
        col = frame[name]
        values = col.astype(object).where(col.notna(), None).tolist()
        out[name] = [v.item() if isinstance(v, np.generic) else v for v in values]
    return out


def load_slot(path: Path, verify: bool = True) -> Slot:
    """Open the slot at ``path``; with ``verify`` check every file against its sha256 first.

    Raises:
        FileNotFoundError: a slot file is missing.
        ValueError: checksum mismatch, unknown format, or files that disagree with the manifest.
    """
    path = Path(path)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"slot {path} has format_version {manifest.get('format_version')!r}, "
            f"expected {FORMAT_VERSION}"
        )
    if verify:
        checksums = manifest.get("checksums", {})
        for file in DATA_FILES:
            if file not in checksums:
                raise ValueError(f"manifest of {path} has no checksum for {file}")
        for file, digest in checksums.items():  # the data files and the term index's
            if sha256_file(path / file) != digest:
                raise ValueError(f"checksum mismatch for {file} in slot {path}")
    index = faiss.read_index(str(path / INDEX_FILE))
    items = pd.read_parquet(path / ITEMS_FILE)
    # Memory-mapped: exact scans touch only the rows they need; pages are shared by processes.
    vectors = np.load(path / VECTORS_FILE, mmap_mode="r")
    counts = {
        "index": index.ntotal,
        "items": len(items),
        "vectors": len(vectors),
        "manifest": manifest["item_count"],
    }
    if len(set(counts.values())) != 1:
        raise ValueError(f"slot {path} item counts disagree: {counts}")
    if index.d != manifest["dim"]:
        raise ValueError(f"slot {path} index dim {index.d} != manifest dim {manifest['dim']}")
    if manifest.get("index", {}).get("kind") == "exact":  # torch on a GPU (or the CPU)
        device.attach(index, vectors)
    terms = TermIndex.load(path / TERMS_DIR) if "terms" in manifest else None
    if terms is not None and terms.n_docs != len(items):
        raise ValueError(f"slot {path} term index has {terms.n_docs} documents, not {len(items)}")
    return Slot(path, manifest, items, index, vectors, terms)
