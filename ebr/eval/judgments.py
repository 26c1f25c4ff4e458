"""Relevance judgments: people mark results relevant or not (the relevance page, ``serving``),
saved as a query set in the workspace, and NDCG@10 per release computed from them (the page's
line, ``ebr judgments report``, and its gate: ``--min-ndcg`` / ``--min-ratio``).

A query set is ``judgments/<name>.json``: one judgment per (query, member, job), the latest
mark wins. A query is what was typed (normalised: stripped, lower case, spaces collapsed) with
the signed-in member or none: the same words for two members are two queries, because the
page they see differs.

NDCG@10 of a release on a set: per judged query, the release's top 10 for that query, each
result's gain its judgment (1 relevant, 0 not or unjudged), divided by the ideal order of
the query's relevant judgments; the mean over queries with at least one relevant judgment.
``judged@10`` says how much of the top 10 was judged at all: a release whose results nobody
judged scores low for lack of judgments, not only for bad results.
"""

from __future__ import annotations

import fcntl
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ebr.config import Workspace
from ebr.io import atomic_write_json

SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_JUDGMENTS = 100_000  # per set: a set is read whole for every report
K = 10


@dataclass(frozen=True)
class Judgment:
    """One mark: ``job_id`` is (not) relevant to ``query`` typed by ``member_id``."""

    query: str | None
    member_id: int | None
    job_id: int
    relevant: bool
    at: str = ""

    @property
    def key(self) -> tuple[str | None, int | None]:
        return self.query, self.member_id


def normalise_query(query: str | None) -> str | None:
    """What was typed, as judgments key it (None: no query, e.g. a member's feed)."""
    if query is None:
        return None
    text = " ".join(query.split()).lower()
    return text or None


def set_path(ws: Workspace, name: str) -> Path:
    """``judgments/<name>.json``; a ValueError naming the set when the name is not one."""
    if not isinstance(name, str) or not SET_NAME.fullmatch(name):
        raise ValueError(
            f"a judgment set's name is 1-64 letters, digits, '.', '_' or '-' (starting with a "
            f"letter or digit), got {name!r}"
        )
    return ws.root / "judgments" / f"{name}.json"


def read_set(ws: Workspace, name: str) -> list[Judgment]:
    """The set's judgments ([] when it does not exist yet).

    Raises:
        ValueError: the file is not a judgment set (named, with why).
    """
    path = set_path(ws, name)
    if not path.is_file():
        return []
    try:
        doc = json.loads(path.read_text())
        return [Judgment(**j) for j in doc["judgments"]]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a judgment set: {err}") from None


def list_sets(ws: Workspace) -> list[dict[str, Any]]:
    """Every set in the workspace: its name, judgments and queries."""
    folder = ws.root / "judgments"
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if not SET_NAME.fullmatch(path.stem):
            continue
        items = read_set(ws, path.stem)
        out.append({"name": path.stem, "judgments": len(items),
                    "queries": len({j.key for j in items})})  # fmt: skip
    return out


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise writers of one set across processes (replicas, the CLI)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def record(
    ws: Workspace, name: str, query: str | None, member_id: int | None, job_id: int,
    relevant: bool, now: datetime | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Save one judgment in set ``name`` (replacing an earlier mark of the same query, member
    and job); the set is rewritten atomically, so a reader sees it before or after, whole.
    -> ``{"set", "judgments", "queries"}``.

    Raises:
        ValueError: a bad set name, no query and no member, or a full set.
    """
    path = set_path(ws, name)
    query = normalise_query(query)
    if query is None and member_id is None:
        raise ValueError("a judgment needs the query, the member, or both it was made for")
    stamp = (now or datetime.now(UTC)).isoformat()
    new = Judgment(query, member_id, int(job_id), bool(relevant), stamp)
    with _locked(path):
        kept = [j for j in read_set(ws, name) if (j.key, j.job_id) != (new.key, new.job_id)]
        if len(kept) >= MAX_JUDGMENTS:
            raise ValueError(f"judgment set {name!r} holds {MAX_JUDGMENTS} judgments already")
        kept.append(new)
        atomic_write_json(path, {"name": name, "judgments": [asdict(j) for j in kept]})
    return {"set": name, "judgments": len(kept), "queries": len({j.key for j in kept})}


def queries(items: Sequence[Judgment]) -> dict[tuple[str | None, int | None], dict[int, int]]:
    """Per judged query (query, member): job id -> gain (1 relevant, 0 not)."""
    out: dict[tuple[str | None, int | None], dict[int, int]] = {}
    for j in items:
        out.setdefault(j.key, {})[j.job_id] = int(j.relevant)
    return out


def ndcg(shown: Sequence[int], gains: Mapping[int, int], k: int = K) -> float:
    """NDCG@k of the ids ``shown`` (best first) against ``gains`` (unjudged: 0); NaN when no
    judged job is relevant."""
    disc = 1 / np.log2(np.arange(2, k + 2))
    ideal = sorted(gains.values(), reverse=True)[:k]
    best = float(np.dot(ideal, disc[: len(ideal)]))
    if best <= 0:
        return float("nan")
    got = [gains.get(int(j), 0) for j in shown[:k]]
    return float(np.dot(got, disc[: len(got)])) / best


Search = Callable[[str | None, int | None, int], Sequence[int]]


def report(items: Sequence[Judgment], searches: Mapping[str, Search], k: int = K) -> dict[str, Any]:
    """NDCG@k per release of ``searches`` (release id -> (query, member, k) -> job ids shown)
    over the judged queries of ``items``: ``{"queries", "releases": {id: {"ndcg@10",
    "judged@10", "queries"}}}``; ``ndcg@10`` is None when no query has a relevant judgment."""
    judged = queries(items)
    out: dict[str, Any] = {"queries": len(judged), "judgments": len(items), "k": k,
                           "releases": {}}  # fmt: skip
    for rid, search in searches.items():
        scores, coverage = [], []
        for (query, member), gains in judged.items():
            shown = list(search(query, member, k))[:k]
            coverage.append(sum(int(j) in gains for j in shown) / k)
            score = ndcg(shown, gains, k)
            if not np.isnan(score):
                scores.append(score)
        out["releases"][rid] = {
            f"ndcg@{k}": round(float(np.mean(scores)), 4) if scores else None,
            f"judged@{k}": round(float(np.mean(coverage)), 4) if coverage else None,
            "queries": len(scores),
        }
    return out


def gate(result: Mapping[str, Any], release: str, min_ndcg: float = 0.0,
         baseline: str | None = None, min_ratio: float = 0.0) -> list[str]:  # fmt: skip
    """Why ``release`` fails the judgments gate on ``report``'s ``result`` ([] passes): its
    NDCG@10 below ``min_ndcg``, or below ``min_ratio`` x ``baseline``'s."""
    k = result["k"]
    mine = result["releases"][release][f"ndcg@{k}"]
    if mine is None:
        return [f"{release}: no judged query has a relevant judgment"]
    faults = []
    if mine < min_ndcg:
        faults.append(f"{release}: NDCG@{k} {mine:.4f} < {min_ndcg}")
    if baseline is not None and baseline != release:
        theirs = result["releases"][baseline][f"ndcg@{k}"]
        if theirs is not None and mine < min_ratio * theirs:
            faults.append(f"{release}: NDCG@{k} {mine:.4f} < {min_ratio} x {baseline}'s "
                          f"{theirs:.4f}")  # fmt: skip
    return faults
