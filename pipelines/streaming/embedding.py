"""What the streaming job embeds for a poll, as requests to the shared embedding transform.

A poll's events need every model its target releases pin (``ebr.release.targets``), in two
rounds through ``pipelines.towers.EmbedTowers`` (the batch pipelines' transform):

1. ``first_requests``: posted and updated jobs with each version's item tower; profile changes
   with each co-trained member-interest tower (the member's engagement history joined in, as
   the batch interest run joins it);
2. ``member_requests``: profile changes with each version's request tower, the member's fresh
   interest embedding from round 1 joined in (what the batch catalogue run joins).

``embedded_of`` pairs a round's requests with their results: (kind, model version) ->
(rows or None, dead letters). ``embed_events`` runs both rounds in-line over
``pipelines.towers.embed_requests`` (the function the transform runs): the job's fallback when a
poll is embedded one event at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ebr.config import Workspace
from ebr.model.interest import engagements, history_as_of
from ebr.release.targets import Target
from ebr.stream.events import Event
from ebr.versions import interest_paths, version_paths
from pipelines.towers import EmbedRequest, Result, embed_requests

UPSERTS = ("job_posted", "job_updated")
Key = tuple[str, str]  # (kind, model version)
# (kind, model version) -> (rows or None, dead letters) for one poll
Embedded = dict[Key, Result]
Round = tuple[tuple[Key, ...], tuple[EmbedRequest, ...]]


def _request(ws: Workspace, kind: str, version: str, records: list[Any]) -> EmbedRequest:
    paths = interest_paths(ws, version) if kind == "interest" else version_paths(ws, version)
    return EmbedRequest(kind, str(paths.model), records)


def histories(cache: dict[Any, Any], ws: Workspace) -> dict[int, str]:
    """member_id -> the history text of every engagement logged (the batch interest run's
    input when it is given no cut-off), read once per worker."""
    if "histories" not in cache:
        impressions = pd.read_parquet(ws.data / "impressions.parquet")
        jobs = pd.read_parquet(ws.data / "jobs.parquet", columns=["job_id", "title"])
        engaged = engagements(impressions, jobs)
        after_all = engaged["ts"].max() + pd.Timedelta(seconds=1) if len(engaged) else None
        cache["histories"] = {} if after_all is None else history_as_of(engaged, after_all)
    return cache["histories"]  # type: ignore[no-any-return]


def first_requests(
    ws: Workspace, events: Sequence[Event], targets: Sequence[Target], cache: dict[Any, Any]
) -> Round:
    """Round 1: jobs per model version, members per member-interest version."""
    jobs = [e.record for e in events if e.kind in UPSERTS]
    members = [e for e in events if e.kind == "member_profile_updated"]
    keys: list[Key] = []
    requests: list[EmbedRequest] = []
    if jobs:
        for version in dict.fromkeys(t.version for t in targets):
            keys.append(("jobs", version))
            requests.append(_request(ws, "jobs", version, list(jobs)))
    if members:
        history = histories(cache, ws)
        for iv in dict.fromkeys(t.interest_version for t in targets if t.interest_version):
            recs = [{**(e.record or {}), "history": history.get(e.entity_id, "")} for e in members]
            keys.append(("interest", iv))
            requests.append(_request(ws, "interest", iv, recs))
    return tuple(keys), tuple(requests)


def member_requests(
    ws: Workspace, events: Sequence[Event], targets: Sequence[Target], first: Embedded
) -> Round:
    """Round 2: members per model version, each with its fresh interest embedding (round 1's
    rows of the interest version the model was co-trained with)."""
    members = [e for e in events if e.kind == "member_profile_updated"]
    if not members:
        return (), ()
    keys: list[Key] = []
    requests: list[EmbedRequest] = []
    for t in {t.version: t for t in targets}.values():
        iv = t.interest_version
        interest = vectors_by_id(first["interest", iv][0]) if iv else {}
        recs = [{**(e.record or {}), "interest": interest.get(e.entity_id)} for e in members]
        keys.append(("members", t.version))
        requests.append(_request(ws, "members", t.version, recs))
    return tuple(keys), tuple(requests)


def embedded_of(keys: Sequence[Key], results: Sequence[Result]) -> Embedded:
    return dict(zip(keys, results, strict=True))


def embed_events(
    ws: Workspace, events: Sequence[Event], targets: Sequence[Target], cache: dict[Any, Any]
) -> Embedded:
    """Both rounds in-line (``embed_requests``): rows of every model the targets need."""
    keys, requests = first_requests(ws, events, targets, cache)
    first = embedded_of(keys, embed_requests(requests))
    keys, requests = member_requests(ws, events, targets, first)
    return first | embedded_of(keys, embed_requests(requests))


def vectors_by_id(table: pa.Table | None) -> dict[int, np.ndarray]:
    if table is None:
        return {}
    ids = table.column(0).to_numpy()
    vecs = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    return {int(i): v.astype(np.float32) for i, v in zip(ids, vecs, strict=True)}
