"""The streaming job's stages after Decode (``pipelines.streaming.pipeline``): Write and Ack
(Embed is ``pipelines.streaming.embed_stage``), with the options and the element (``Work``)
every stage shares, and the retry budget.

``Work`` is one poll on its way: the entries it acknowledges, the latest event per entity, the
releases it is written to and every model's rows. ``Embed`` fills the rows, ``_Write`` applies
it to every sink, ``_Ack`` acknowledges its entries. What a stage holds for long (the Feast
store, slot writers, the Redis client) is made once per process
(``pipelines.streaming.shared``): the local job sets its stages up again for every
micro-batch (``pipelines.streaming.local``).

Retry budget: a failed poll stays pending and is claimed again (``claim_idle_ms``); each
delivery counts (XPENDING, ``Broker.deliveries``). Once an entry has been delivered
``max_deliveries`` times, a failure no longer leaves it pending: the poll's events are embedded
or written one by one, and one that still fails alone is dead-lettered with the exception
(``gave_up``); the others are applied. One entry never blocks the stream for good.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import apache_beam as beam
from redis.exceptions import RedisError

from ebr.config import Workspace
from ebr.data.records import echo
from ebr.release.targets import Target
from ebr.stream.events import BadEvent, Event
from pipelines.deadletter import REASON_CHARS
from pipelines.streaming.broker import GROUP, STREAM, Broker
from pipelines.streaming.shared import shared
from pipelines.streaming.sinks import Sinks

if TYPE_CHECKING:
    from pipelines.streaming.embedding import Embedded

log = logging.getLogger(__name__)
# Failures of the stores, not of an event: the poll is retried whole, later.
TRANSIENT = (RedisError, OSError, sqlite3.OperationalError)


@dataclass(frozen=True)
class StreamOptions:
    """What the streaming job reads and how often (also the key of its shared state)."""

    workspace: str
    redis_url: str
    consumer: str = "embedder-1"  # this worker's name in the consumer group
    stream: str = STREAM
    group: str = GROUP
    poll_interval_s: float = 0.25  # one poll per impulse; at most one micro-batch per interval
    max_events: int = 512  # entries per poll: one element, one forward pass per model
    claim_idle_ms: int = 30_000  # entries pending this long are claimed again (a failed poll)
    # None: the store the workspace was published to (EBR_FEAST_CONFIG, else its record)
    feast_config: str | None = None
    source: str = "redis"  # or kafka / pubsub (pipelines.streaming.sources); Redis keeps the state
    source_config: str = ""  # JSON: what the kafka or pubsub source reads
    max_deliveries: int = 5  # retry budget: a failing entry delivered this often is dead-lettered

    def broker(self) -> Broker:
        """This process's consumer for these options (one Redis client for every stage)."""
        return shared("broker", self, lambda: Broker(
            self.redis_url, self.consumer, stream=self.stream, group=self.group,
            claim_idle_ms=self.claim_idle_ms))  # fmt: skip


def spent_budget(broker: Broker, entry_ids: list[str], max_deliveries: int) -> dict[str, int]:
    """entry id -> deliveries, of the entries delivered ``max_deliveries`` times or more: their
    retry budget is spent (a failure now dead-letters them instead of leaving them pending)."""
    counts = broker.deliveries(entry_ids) if entry_ids else {}
    return {eid: n for eid, n in counts.items() if n >= max_deliveries}


def gave_up(entry_id: str, deliveries: int, what: str, err: BaseException, raw: Any) -> BadEvent:
    """The dead letter of an entry whose retry budget is spent, naming the last failure."""
    reason = f"{what} failed after {deliveries} deliveries: {type(err).__name__}: {err}"
    return BadEvent(entry_id, reason[:REASON_CHARS], echo(raw))


class Work(NamedTuple):
    """One poll on its way through the stages."""

    entry_ids: list[str]  # every entry of the poll that decoded (acknowledged at the end)
    events: list[Event]  # the latest event per entity among them
    targets: tuple[Target, ...] = ()
    embedded: Embedded | None = None
    backfill: tuple[str, ...] = ()  # releases this element brings up to date with the catalog


class _Writer:
    """The process's sinks and the lock that lets one poll at a time through them."""

    def __init__(self, sinks: Sinks) -> None:
        self.sinks, self.lock = sinks, threading.Lock()

    def close(self) -> None:
        self.sinks.close()


class _Write(beam.DoFn):
    """``Work`` -> its entry ids once every sink has its events.

    A failure of the stores themselves (Redis, the disk, the Feast database: ``TRANSIENT``)
    leaves the whole poll pending, claimed again later, until the retry budget of some of its
    entries is spent. Any other failure is an event the sinks cannot take. In both cases the
    poll's events are then written one by one, and each one that fails alone goes to the
    dead-letter stream with the exception (a transient one only once its entry's budget is
    spent: before, the poll stays pending); the others are applied."""

    def __init__(self, opts: StreamOptions) -> None:
        self._opts = opts

    def setup(self) -> None:
        ws = Workspace(Path(self._opts.workspace))
        self._broker = self._opts.broker()
        make = lambda: _Writer(Sinks(ws, self._broker, self._opts.feast_config))  # noqa: E731
        writer = shared("sinks", self._opts, make)  # closed when the job stops
        self._sinks, self._lock = writer.sinks, writer.lock

    def process(self, work: Work) -> Iterable[list[str]]:
        assert work.embedded is not None, "Embed runs first"
        with self._lock:
            try:
                try:
                    self._sinks.write(work.events, work.targets, work.embedded)
                except TRANSIENT:
                    if not self._spent(work.entry_ids):
                        raise
                    log.exception("a store keeps failing; writing the poll's events one by one")
                    self._one_by_one(work)
                except Exception:
                    log.exception("a poll failed its sinks; writing its events one by one")
                    self._one_by_one(work)
                self._sinks.applied.mark_seen(work.backfill)
            except TRANSIENT:  # retried: the poll stays pending until it is claimed again
                log.exception("a store failed; %d entries stay pending", len(work.entry_ids))
                return
        yield work.entry_ids

    def _spent(self, entry_ids: list[str]) -> dict[str, int]:
        return spent_budget(self._broker, entry_ids, self._opts.max_deliveries)

    def _one_by_one(self, work: Work) -> None:
        assert work.embedded is not None, "Embed runs first"
        bad, spent = [], None
        for event in work.events:
            try:
                self._sinks.write([event], work.targets, work.embedded)
            except TRANSIENT as err:  # a store: this event's entry gets its whole budget
                spent = self._spent(work.entry_ids) if spent is None else spent
                if event.entry_id not in spent:
                    raise
                n = spent[event.entry_id]
                bad.append(gave_up(event.entry_id, n, "sink", err, event.record))
            except Exception as err:  # this event, alone: dead-lettered with the reason
                reason = f"sink failed: {type(err).__name__}: {err}"[:REASON_CHARS]
                bad.append(BadEvent(event.entry_id, reason, echo(event.record)))
        self._broker.dead_letter(bad, ack=False)


class _Ack(beam.DoFn):
    def __init__(self, opts: StreamOptions) -> None:
        self._opts = opts

    def setup(self) -> None:
        self._broker = self._opts.broker()

    def process(self, entry_ids: list[str]) -> Iterable[int]:
        try:
            yield self._broker.ack(entry_ids)
        except RedisError:  # applied but not acknowledged: redelivered, skipped by the sinks
            log.warning("could not acknowledge %d entries (Redis down?)", len(entry_ids))
