"""Release records: one immutable, checksummed JSON document per release.

``releases/<id>/release.json`` is written once (``ebr.io.atomic_directory``: a reader sees the
whole record or none) and never changed; its ``checksum`` is the sha256 of the canonical JSON
of every other field, so an edited record is refused on read. What changes over a release's
life (candidate, serving, retired; live or an experiment arm) lives in the state pointer
(``ebr.release.state``), never here.

Readers take the typed view, ``read_release`` -> ``Release`` (frozen: model, interest, features,
slot, gates, paths), read once where a release is loaded and passed on; ``read_record`` gives
the JSON document itself (what the CLI prints and ``write_record`` writes).

    rid = new_release_id("v2")                   # rel-v2-20261130T101500123456
    write_record(ws, {"id": rid, "model": {...}, ...})
    read_release(ws, rid).slot.name
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ebr.config import Workspace, check_version
from ebr.io import atomic_directory, atomic_write_json
from ebr.versions import interest_paths, version_paths

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


def _frozen(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


@dataclass(frozen=True)
class ModelPin:
    """The two-tower model a release serves: its version and the files' checksums."""

    version: str
    checksums: Mapping[str, str]  # file name -> sha256, as model.json lists them
    model_json_sha256: str
    config: Mapping[str, Any]  # the ModelConfig it was trained with


@dataclass(frozen=True)
class InterestPin:
    """The member-interest model the two towers were co-trained with."""

    version: str
    checksums: Mapping[str, str] | None
    dim: int | None


@dataclass(frozen=True)
class FeaturePin:
    """The release's Feast feature services and views (``ebr.versions.feature_names``)."""

    request_service: str
    item_service: str
    views: tuple[str, ...]


@dataclass(frozen=True)
class SlotPin:
    """The index slot the release searches, as its manifest was when the release was gated."""

    name: str
    manifest_sha256: str
    model_version: str
    item_count: int
    recall_at_10: float
    index: Mapping[str, Any]  # the manifest's index section (kind, nlist, nprobe, ...)


@dataclass(frozen=True)
class RankerPin:
    """The second-stage ranker a release serves (``ebr.rank``): its folder and checksums."""

    id: str
    path: Path  # rankers/<version>/<id>/
    model_sha256: str  # of its model.txt
    ndcg: Mapping[str, Any]  # held-out NDCG@10 by session kind, as its training judged it


@dataclass(frozen=True)
class RankingPin:
    """What follows retrieval in this release: how many candidates are retrieved (``depth``),
    the ranker that orders them (None: retrieval order) and the page's crowding defaults."""

    depth: int = 200
    ranker: RankerPin | None = None
    max_per_company: int | None = None
    max_per_city: int | None = None


@dataclass(frozen=True)
class ReleasePaths:
    """Where a release's files are in its workspace."""

    model: Path  # models/<version>/
    interest_model: Path | None  # interest/models/<iv>/, None without an interest input
    jobs: Path  # embeddings/<version>/jobs.parquet
    members: Path  # embeddings/<version>/members.parquet
    slot: Path  # slots/<slot name>/


@dataclass(frozen=True)
class Release:
    """One release, typed: what it pins, its gates' verdicts and where its files are.

    ``Release.from_doc`` checks every field a reader relies on; ``doc`` keeps the whole
    record (evaluation, coverage, gate config) read-only, for what prints or copies it."""

    id: str
    model: ModelPin
    interest: InterestPin | None
    features: FeaturePin
    slot: SlotPin
    gates: tuple[Mapping[str, Any], ...]
    evaluation: Mapping[str, Any] | None
    parent: str | None
    created_at: str
    paths: ReleasePaths
    doc: Mapping[str, Any] = field(repr=False, compare=False)
    ranking: RankingPin = RankingPin()  # records before rankers: retrieval order, no caps

    @property
    def version(self) -> str:
        """The model version (``model.version``): the slot's vectors and the request tower."""
        return self.model.version

    @property
    def interest_version(self) -> str | None:
        return None if self.interest is None else self.interest.version

    def record(self) -> dict[str, Any]:
        """The record document, a JSON-able copy (what the CLI prints)."""
        return copy.deepcopy(dict(self.doc))

    @classmethod
    def from_doc(cls, ws: Workspace, doc: Mapping[str, Any]) -> Release:
        """The typed view of a record document (``read_record``'s, or one ``provision`` is
        gating before it writes it). Raises ValueError naming a missing or mistyped field."""
        try:
            return cls._parse(ws, doc)
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            rid = doc.get("id") if isinstance(doc, Mapping) else None
            raise ValueError(f"release record {rid!r} lacks or mistypes a field: {err!r}") from None

    @classmethod
    def _parse(cls, ws: Workspace, doc: Mapping[str, Any]) -> Release:
        model, interest, slot = doc["model"], doc["member_interest"], doc["slot"]
        version = check_version(model["version"])
        iv = None if interest is None else check_version(interest["version"])
        paths = version_paths(ws, version)
        ev = doc.get("evaluation")
        return cls(
            ranking=_ranking(ws, doc.get("ranking")),
            id=check_release_id(doc["id"]),
            model=ModelPin(
                version,
                _frozen(model["checksums"]),
                str(model["model_json_sha256"]),
                _frozen(model.get("model_config") or {}),
            ),
            interest=None
            if interest is None
            else InterestPin(
                iv or "",
                None if interest.get("checksums") is None else _frozen(interest["checksums"]),
                interest.get("dim"),
            ),
            features=FeaturePin(
                str(doc["features"]["request_service"]),
                str(doc["features"]["item_service"]),
                tuple(doc["features"]["views"]),
            ),
            slot=SlotPin(
                str(slot["name"]),
                str(slot["manifest_sha256"]),
                str(slot["model_version"]),
                int(slot["item_count"]),
                float(slot["recall_at_10"]),
                _frozen(slot.get("index") or {}),
            ),
            gates=tuple(_frozen(g) for g in doc.get("gates") or ()),
            evaluation=None if ev is None else _frozen(ev),
            parent=doc.get("parent"),
            created_at=str(doc.get("created_at", "")),
            paths=ReleasePaths(
                model=paths.model,
                interest_model=None if iv is None else interest_paths(ws, iv).model,
                jobs=paths.jobs,
                members=paths.members,
                slot=ws.slots / str(slot["name"]),
            ),
            doc=_frozen(doc),
        )


def _cap(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"ranking.{name} must be an integer >= 1 or null, got {value!r}")
    return value


def _ranking(ws: Workspace, doc: Mapping[str, Any] | None) -> RankingPin:
    """The ``ranking`` field of a record (absent in records written before rankers)."""
    if doc is None:
        return RankingPin()
    depth = doc.get("depth", 200)
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 2000:
        raise ValueError(f"ranking.depth must be an integer in [1, 2000], got {depth!r}")
    pin = doc.get("ranker")
    ranker = None
    if pin is not None:
        ranker = RankerPin(
            str(pin["id"]), ws.root / str(pin["path"]), str(pin["model_sha256"]),
            _frozen(pin.get("ndcg@10") or {}),
        )  # fmt: skip
    return RankingPin(depth, ranker, _cap(doc.get("max_per_company"), "max_per_company"),
                      _cap(doc.get("max_per_city"), "max_per_city"))  # fmt: skip


def read_release(ws: Workspace, release_id: str) -> Release:
    """``read_record``'s record (checksum verified), typed. Raises as ``read_record`` does,
    and ValueError for a record that lacks a field readers rely on."""
    return Release.from_doc(ws, read_record(ws, release_id))
