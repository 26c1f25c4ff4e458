"""The streaming job's Embed stage: a poll's ``Work`` -> the same with every model's rows.

``_Plan`` (the releases to write, re-read when ``releases/state.json`` changes; the first
round of embedding requests; a backfill element first for a release that joined since), two
rounds of the shared ``pipelines.towers.EmbedTowers`` transform (the batch pipelines'
embedding step; ``pipelines.streaming.embedding`` says what each round embeds) and ``_Settle``
(a poll that could not be embedded: pending, or one event at a time once its retry budget is
spent), in a line: each element stays whole from its source to its acknowledgement.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import apache_beam as beam

from ebr.config import Workspace
from ebr.release.targets import Target, write_targets
from pipelines.streaming.embedding import (
    embed_events,
    embedded_of,
    first_requests,
    member_requests,
)
from pipelines.streaming.shared import shared
from pipelines.streaming.stages import StreamOptions, Work, gave_up, spent_budget
from pipelines.streaming.state import Applied
from pipelines.towers import Embedding, EmbedTowers

log = logging.getLogger(__name__)
BACKFILL_RETRY_S = 60.0  # a release still not brought up to date after this gets another


class _Targets:
    """The releases to write, re-read when ``releases/state.json`` changes."""

    def __init__(self, ws: Workspace) -> None:
        self._ws, self._stamp = ws, -1
        self._targets: tuple[Target, ...] = ()

    def current(self) -> tuple[Target, ...]:
        path = self._ws.releases / "state.json"
        stamp = path.stat().st_mtime_ns if path.is_file() else 0
        if stamp != self._stamp:
            self._targets = tuple(write_targets(self._ws))
            self._stamp = stamp
            log.info("writing to releases %s", [t.release_id for t in self._targets])
        return self._targets


class _PlanState(NamedTuple):
    """What ``_Plan`` and ``_Settle`` keep for the process (``pipelines.streaming.shared``)."""

    ws: Workspace
    targets: _Targets
    applied: Applied
    cache: dict[Any, Any]  # member histories, read once
    issued: dict[str, float]  # release -> when its backfill was sent on


def _plan_state(opts: StreamOptions) -> _PlanState:
    def make() -> _PlanState:
        ws = Workspace(Path(opts.workspace))
        return _PlanState(ws, _Targets(ws), Applied(opts.broker().client), {}, {})

    return shared("plan", opts, make)


class _Plan(beam.DoFn):
    """``Work`` -> ``(carry, requests)`` for the first round of ``EmbedTowers`` (the carry is
    the work with its targets, and the keys of its requests); nothing when reading the releases
    or the histories fails (the entries stay pending and are claimed again).

    A release the job has not written to before (a candidate recorded, an arm added; every
    release on the job's first start) first gets a backfill element: the streamed catalog's
    latest event per entity, so it holds every change streamed before it joined. The sinks skip
    what it has already (an idempotent replay)."""

    def __init__(self, opts: StreamOptions) -> None:
        self._opts = opts

    def setup(self) -> None:
        self._state = _plan_state(self._opts)

    def process(self, work: Work) -> Iterable[Any]:
        state = self._state
        try:
            targets = state.targets.current()
            unseen = state.applied.unseen([t.release_id for t in targets])
            now = time.monotonic()  # one backfill in flight per release (again if it failed)
            late = [r for r in unseen if now - state.issued.get(r, now) >= BACKFILL_RETRY_S]
            new = [r for r in unseen if r not in state.issued] + late
            out = []
            if new:
                state.issued.update(dict.fromkeys(new, now))
                out.append(self._backfill(tuple(t for t in targets if t.release_id in new)))
            out.append(work._replace(targets=targets))
            planned = [self._first_round(w) for w in out]
        except Exception:  # retried as a failed sink is: the poll stays pending
            log.exception("planning failed for a poll of %d entries", len(work.entry_ids))
            return
        yield from planned

    def _first_round(self, work: Work) -> tuple[Any, Any]:
        keys, requests = first_requests(self._state.ws, work.events, work.targets,
                                        self._state.cache)  # fmt: skip
        return (work, keys), requests

    def _backfill(self, targets: tuple[Target, ...]) -> Work:
        events = self._state.applied.catalog_events()
        log.info("bringing %s up to date: %d streamed changes", [t.release_id for t in targets],
                 len(events))  # fmt: skip
        return Work([], events, targets, None, tuple(t.release_id for t in targets))


def plan_members(element: Embedding, ws: Workspace) -> tuple[Any, Any]:
    """The first round's ``Embedding`` -> the second round's ``(carry, requests)`` (none when
    the first round failed: its error travels on in the carry)."""
    work, keys = element.carry
    if element.error is not None:
        return (work, {}, (), element.error), ()
    try:
        first = embedded_of(keys, element.results)
        keys2, requests = member_requests(ws, work.events, work.targets, first)
    except Exception as err:  # settled as a failed round is
        return (work, {}, (), err), ()
    return (work, first, keys2, None), requests


class _Settle(beam.DoFn):
    """The second round's ``Embedding`` -> the work with every model's rows. A poll whose
    embedding failed (in either round) -> nothing (the entries stay pending and are claimed
    again) until the retry budget of some is spent: then each event is embedded alone
    (``pipelines.streaming.embedding.embed_events``), and one that fails alone while its
    entry's budget is spent is dead-lettered with the exception."""

    def __init__(self, opts: StreamOptions) -> None:
        self._opts = opts

    def setup(self) -> None:
        state = _plan_state(self._opts)
        self._ws, self._targets, self._cache = state.ws, state.targets, state.cache

    def process(self, element: Embedding) -> Iterable[Work]:
        work, first, keys, error = element.carry
        error = error or element.error
        if error is None:
            yield work._replace(embedded=first | embedded_of(keys, element.results))
            return
        log.error("embedding failed for a poll of %d entries: %s: %s", len(work.entry_ids),
                  type(error).__name__, error)  # fmt: skip
        alone = self._one_by_one(work)
        if alone is None:
            log.warning("%d entries stay pending", len(work.entry_ids))
            return
        yield alone

    def _one_by_one(self, work: Work) -> Work | None:
        """After a failed embedding: None (the poll stays pending) unless the retry budget of
        some of its entries is spent; then the poll without the events that fail alone (each
        dead-lettered with its exception), or None when one of those still has budget left."""
        try:
            broker = self._opts.broker()
            spent = spent_budget(broker, work.entry_ids, self._opts.max_deliveries)
            if not spent:
                return None
            targets, good, bad = work.targets or self._targets.current(), [], []
            for event in work.events:
                try:
                    embed_events(self._ws, [event], targets, self._cache)
                    good.append(event)
                except Exception as err:
                    if event.entry_id not in spent:
                        return None
                    n = spent[event.entry_id]
                    bad.append(gave_up(event.entry_id, n, "embedding", err, event.record))
            embedded = embed_events(self._ws, good, targets, self._cache)
            broker.dead_letter(bad)  # acknowledged now: a retry of the rest does not repeat them
        except Exception:
            log.exception("embedding one by one failed too")
            return None
        return work._replace(events=good, targets=targets, embedded=embedded)


class Embed(beam.PTransform):
    """``Work`` -> the same with every model's rows: ``_Plan``, two rounds of the shared
    ``EmbedTowers``, ``_Settle``, in a line (each element stays whole: no grouping, no
    Flatten)."""

    def __init__(self, opts: StreamOptions) -> None:
        super().__init__()
        self._opts = opts

    def expand(self, polls: beam.PCollection) -> beam.PCollection:
        ws = Workspace(Path(self._opts.workspace))
        return (
            polls
            | "Plan" >> beam.ParDo(_Plan(self._opts))
            | "Round1" >> EmbedTowers()
            | "PlanMembers" >> beam.Map(plan_members, ws)
            | "Round2" >> EmbedTowers()
            | "Settle" >> beam.ParDo(_Settle(self._opts))
        )
