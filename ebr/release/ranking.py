"""A release's ranking stage: which ranker it pins (if any), how deep it retrieves, and its
crowding defaults; and the ranker's gate.

    doc["ranking"] = ranking_doc(ws, "v1", RankingSpec(ranker="latest", max_per_company=3))

A ranker is trained for one model version (``ebr.rank.train``: ``rankers/<version>/<id>/``)
and pinned by the sha256 of its model file; ``ranker_verdict`` passes it when its held-out
NDCG@10 (all sessions) is at least ``GateConfig.min_ranker_ndcg_ratio`` times the release's
own retrieval order (``ebr.release.gates``). Two releases of one slot, with and without the
ranker, are the A/B pair of "same retrieval, ranked or not".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ebr.config import Workspace
from ebr.io import sha256_file
from ebr.rank.model import META_FILE, MODEL_FILE, RANKER_ID
from ebr.release.record import Release


@dataclass(frozen=True)
class RankingSpec:
    """What ``provision`` pins after retrieval (defaults: retrieval order, no caps)."""

    ranker: str | None = None  # "latest" (the version's newest ranker), a ranker id, or None
    depth: int = 200  # candidates retrieved per request (and ranked, with a ranker)
    max_per_company: int | None = None  # the page's default crowding caps (None: none)
    max_per_city: int | None = None

    def __post_init__(self) -> None:
        if (
            isinstance(self.depth, bool)
            or not isinstance(self.depth, int)
            or not (1 <= self.depth <= 2000)
        ):
            raise ValueError(f"depth must be an integer in [1, 2000], got {self.depth!r}")
        for name in ("max_per_company", "max_per_city"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be an integer >= 1 or None, got {v!r}")


def live_ranking(ws: Workspace, version: str) -> RankingSpec:
    """The live release's ranking (ranker, depth, caps) when it serves ``version``, else the
    default (retrieval order): what a re-embedded slot of the live version keeps."""
    from ebr.release.state import live_release

    try:
        live = live_release(ws)
    except LookupError:  # nothing live yet (an unreadable state or record still raises)
        return RankingSpec()
    if live.version != version:
        return RankingSpec()
    pin = live.ranking
    return RankingSpec(None if pin.ranker is None else pin.ranker.id, pin.depth,
                       pin.max_per_company, pin.max_per_city)  # fmt: skip


def find_ranker(ws: Workspace, version: str, which: str) -> str:
    """The id of ranker ``which`` of ``version`` ("latest": the newest); FileNotFoundError
    naming the folder when there is none."""
    folder = ws.rankers / version
    found = sorted(p.name for p in folder.glob("rank-*") if RANKER_ID.fullmatch(p.name))
    if which == "latest":
        if not found:
            raise FileNotFoundError(f"no ranker of {version} in {folder} (ebr.rank.train)")
        return found[-1]
    if which not in found:
        raise FileNotFoundError(f"no ranker {which!r} of {version} in {folder}; it has {found}")
    return which


def ranking_doc(ws: Workspace, version: str, spec: RankingSpec) -> dict[str, Any]:
    """The record's ``ranking`` field for ``spec`` (the ranker resolved and checksummed)."""
    out: dict[str, Any] = {"depth": spec.depth, "max_per_company": spec.max_per_company,
                           "max_per_city": spec.max_per_city, "ranker": None}  # fmt: skip
    if spec.ranker is None:
        return out
    rid = find_ranker(ws, version, spec.ranker)
    folder = ws.rankers / version / rid
    meta = json.loads((folder / META_FILE).read_text())
    if meta.get("model_version") != version:
        raise ValueError(f"ranker {rid} was trained for {meta.get('model_version')!r}")
    ndcg = meta["evaluation"]["ndcg@10"]
    out["ranker"] = {
        "id": rid, "path": str(folder.relative_to(ws.root)),
        "model_sha256": sha256_file(folder / MODEL_FILE),
        "meta_sha256": sha256_file(folder / META_FILE),
        "ndcg@10": {k: v for k, v in ndcg.items() if k in ("all", "search", "feed")},
    }  # fmt: skip
    return out


def ranker_faults(release: Release) -> list[str]:
    """What no longer matches the release's ranker pin (empty: none, or no ranker)."""
    pin = release.ranking.ranker
    if pin is None:
        return []
    model = pin.path / MODEL_FILE
    if not model.is_file():
        return [f"ranker {pin.id} is gone ({model})"]
    if sha256_file(model) != pin.model_sha256:
        return [f"ranker {pin.id}'s {MODEL_FILE} changed since the release was gathered"]
    return []


def ranker_verdict(release: Release, min_ratio: float) -> tuple[bool, float | None, str] | None:
    """The pinned ranker's held-out NDCG@10 (all sessions) against ``min_ratio`` times the
    retrieval order's: (passed, ratio, detail); None without a ranker (``gates.ranker_gate``)."""
    pin = release.ranking.ranker
    if pin is None:
        return None
    faults = ranker_faults(release)
    if faults:
        return False, None, "; ".join(faults)
    every = pin.ndcg.get("all") or {}
    ratio = every.get("ratio")
    if ratio is None:
        return False, None, f"ranker {pin.id} records no held-out NDCG@10"
    detail = (
        f"ranker {pin.id}: held-out NDCG@10 {every['ranker']:.4f} vs retrieval order "
        f"{every['retrieval']:.4f} ({ratio:.3f}x, floor {min_ratio}x)"
    )
    return ratio >= min_ratio, float(ratio), detail
