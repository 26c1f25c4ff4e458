"""The streaming job's sinks: slot logs, Feast views, the catalogue.

``Sinks.write`` applies one poll's events and their embeddings (``pipelines.streaming.embedding``)
to every sink of the target releases, each sink only the events it has not applied yet
(``pipelines.streaming.state.Applied``):

    slot:<slot name>            upserts (job posted/updated) and tombstones (job closed)
    feast:job_embedding_<v>     job rows, pushed online through the view's push source
    feast:member_embedding_<v>  member rows (request tower, no query, fresh interest joined)
    feast:member_interest_<iv>  member-interest rows
    feast:member_profile        the profile fields the request tower reads per request
    catalog:job / catalog:member  the latest event per entity (the final catalogue)

A record a tower refuses is dead-lettered with its reason (per model) and skipped by that
model's sinks; the rest go on. Rows carry the event time as their ``event_timestamp``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import redis

from ebr.config import Workspace
from ebr.data.records import echo
from ebr.data.tables import PROFILE_FIELDS
from ebr.feast_names import PROFILE_VIEW, EmbeddingNames, embedding_names, interest_names
from ebr.release.slots import SLOT_COLUMNS
from ebr.release.targets import Target
from ebr.stream.events import BadEvent, Event
from pipelines.streaming.broker import Broker
from pipelines.streaming.embedding import UPSERTS, Embedded, vectors_by_id
from pipelines.streaming.state import Applied

if TYPE_CHECKING:
    from ebr.index.live.slot import LiveSlot

log = logging.getLogger(__name__)
PROFILE_SINK = f"feast:{PROFILE_VIEW}"


def feast_names_of(kind: str, version: str) -> EmbeddingNames:
    """The Feast view and push source an embedding kind's rows go to (``ebr.feast_names``)."""
    if kind == "interest":
        return interest_names(version)
    return embedding_names("job" if kind == "jobs" else "member", version)


class Sinks:
    """Every sink of the streaming job for one worker (slot logs are opened for writing: one
    writer process per slot, enforced by the log's lock)."""

    def __init__(self, ws: Workspace, broker: Broker, feast_config: str | None) -> None:
        self.ws, self.broker = ws, broker
        self.applied = Applied(broker.client)
        self._feast_config = feast_config
        self._store: Any = None
        self._slots: dict[str, LiveSlot] = {}
        self._successor: dict[str, str] = {}  # a compacted-away slot -> the slot made from it

    def close(self) -> None:
        for live in self._slots.values():
            live.close()
        self._slots.clear()

    def _slot(self, name: str) -> LiveSlot:
        if name not in self._slots:
            from ebr.index.live.slot import open_live

            live = open_live(self.ws.slots / name, writable=True)
            try:
                self._hand_off(live)
            except BaseException:
                live.close()
                raise
            self._slots[name] = live
        return self._slots[name]

    def _hand_off(self, live: LiveSlot) -> None:
        """A slot compacted from another: copy what reached the old log after the compaction
        read it (``ebr.index.live.handover``), take over the old slot's applied ranks, and
        write to both from now on (``_successor``)."""
        from ebr.index.live.handover import compacted_from, handover_start, take_over

        source = compacted_from(live)
        if source is None:
            return
        old, old_log = source
        name = live.snapshot.name
        done = self.applied.handed_off(name)
        if done is None:  # first time: the new log holds only the compaction's own copies
            done = handover_start(live)
            self.applied.inherit(f"slot:{old}", f"slot:{name}")
        end, copied = take_over(live, old_log, done)
        self.applied.mark_handed_off(name, end)
        self._successor[old] = name
        log.info("slot %s took over %s from lsn %d (%d records copied)", name, old, done, copied)

    def _feast(self) -> Any:
        if self._store is None:
            from feature_repo.store import open_store

            self._store = open_store(self.ws.feature_repo, self._feast_config)
        return self._store

    def write(self, events: Sequence[Event], targets: Sequence[Target], embedded: Embedded) -> None:
        """Apply one poll to every sink of ``targets``; raises when a sink failed (the caller
        leaves the poll unacknowledged)."""
        self._dead_letters(events, embedded)
        slots = {t.slot: t.version for t in targets}
        for old, new in self._successor.items():  # a poll read before a compaction replaced
            if old in slots:  # its release still reaches the new slot (same model version)
                slots.setdefault(new, slots[old])
        for name in [n for n in self._slots if n not in slots]:  # a retired release's slot
            self._slots.pop(name).close()
        for slot, version in slots.items():
            self._write_slot(slot, events, embedded.get(("jobs", version)))
        for (kind, version), (table, _) in embedded.items():
            self._push(kind, version, events, table)
        profiles = [e for e in events if e.kind == "member_profile_updated"]
        self._write_profiles(profiles)
        self.applied.remember(events)

    def _dead_letters(self, events: Sequence[Event], embedded: Embedded) -> None:
        entry = {e.entity_id: e for e in events}
        bad = []
        for (kind, version), (_, dead) in embedded.items():
            for d in dead:
                ev = entry.get(d.get("id"))  # type: ignore[arg-type]
                if ev is not None:
                    why = f"{d['stage']} ({kind} {version}): {d['reason']}"
                    bad.append(BadEvent(ev.entry_id, why, echo(ev.record)))
        self.broker.dead_letter(bad, ack=False)

    def _write_slot(self, slot: str, events: Sequence[Event], rows: Any) -> None:
        sink = f"slot:{slot}"
        vectors = vectors_by_id(rows[0]) if rows else {}
        ups = [e for e in events if e.kind in UPSERTS and e.entity_id in vectors]
        closed = [e for e in events if e.kind == "job_closed"]
        if not ups and not closed:
            return
        live = self._slot(slot)  # a compacted slot is handed over first: its ranks count here
        ups, closed = self.applied.newer(sink, ups), self.applied.newer(sink, closed)
        if ups:
            frame = pd.DataFrame([{c: (e.record or {}).get(c) for c in SLOT_COLUMNS} for e in ups])
            frame["posted_at"] = pd.to_datetime(frame["posted_at"], utc=True, format="ISO8601")
            live.upsert(frame, np.stack([vectors[e.entity_id] for e in ups]))
        if closed:
            live.delete([e.entity_id for e in closed])
        self.applied.mark(sink, ups + closed)

    def _push(self, kind: str, version: str, events: Sequence[Event], table: Any) -> None:
        names = feast_names_of(kind, version)
        sink = f"feast:{names.view}"
        vectors = vectors_by_id(table)
        of_kind = [e for e in events if (e.kind in UPSERTS) == (kind == "jobs")]
        fresh = self.applied.newer(sink, [e for e in of_kind if e.entity_id in vectors])
        if not fresh:
            return
        frame = pd.DataFrame(
            {
                "job_id" if kind == "jobs" else "member_id": [e.entity_id for e in fresh],
                "embedding": [vectors[e.entity_id].tolist() for e in fresh],
                "model_version": [version] * len(fresh),
                "event_timestamp": [e.event_time for e in fresh],
            }
        )
        self._feast().push(names.push_source, frame)
        self.applied.mark(sink, fresh)

    def _write_profiles(self, profiles: Sequence[Event]) -> None:
        fresh = self.applied.newer(PROFILE_SINK, profiles)
        if not fresh:
            return
        frame = pd.DataFrame([{f: (e.record or {}).get(f) for f in PROFILE_FIELDS} for e in fresh])
        frame.insert(0, "member_id", [e.entity_id for e in fresh])
        frame["event_timestamp"] = [e.event_time for e in fresh]
        self._feast().write_to_online_store(PROFILE_VIEW, frame)
        self.applied.mark(PROFILE_SINK, fresh)


def latest_catalog(client: redis.Redis) -> dict[str, dict[int, dict[str, Any]]]:
    """The latest streamed event per job and member (what ``overlay`` applies to the tables)."""
    applied = Applied(client)
    return {"job": applied.catalog("job"), "member": applied.catalog("member")}
