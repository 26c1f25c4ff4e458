"""Beam streaming inference: catalogue and profile changes into every serving release, in seconds.

    python -m pipelines.stream --workspace var/demo --redis-url redis://127.0.0.1:6390/0
        [--consumer embedder-1] [--poll-interval-s 0.25] [--run-for-s 600]

Reads change events (``ebr.stream.events``) from the Redis stream's consumer group and, for
every release not retired (``ebr.release.targets``: live, experiment arms, standby and
candidates, re-read whenever ``releases/state.json`` changes, no restart):

- job posted / updated: embeds the job with the release's item tower, appends an upsert to the
  release's slot log and pushes the row to its ``job_embedding_<v>`` Feast view;
- job closed: a tombstone in the slot log; the catalogue row goes inactive;
- member profile updated: the profile row, the member-interest embedding of the co-trained
  interest model and the release's member embedding (request tower, no query) in Feast.

Shape: ``PeriodicImpulse -> Poll -> Decode -> Embed -> Write -> Ack``. One element is one poll
of the stream (up to ``--max-events`` entries) and stays whole from source to acknowledgement,
so an entry is acknowledged only after every sink has it, without a barrier across elements.
Why, as measured on the local DirectRunner (2 cores, Beam 2.77): the impulse-driven poll emits
incrementally (each poll reaches Ack within the same impulse); a fan-out per release re-joined
by a windowed GroupByKey before the acknowledgement would hold every group until the job stops
(FixedWindows(1 s) over a 6 s impulse: all groups came out at 6.0 s); a processing-time trigger
(``Repeatedly(AfterProcessingTime(1))``) fails on this runner (its trigger has no clock);
``fileio.MatchContinuously`` polls once with its defaults (STACK.md). One read per impulse
capped a backlog at ~1,350 events/s (0.25 s impulses, 256 entries a read), so while a backlog
lasts one impulse drains up to ``DRAIN_POLLS`` reads (~3,000 events/s). Embedding runs the
batch pipeline's three steps (``pipelines.towers.Tower``: featurize, one forward pass, output
check) on the poll's records per model version, so stream and batch rows are the same.

Delivery is at-least-once with idempotent sinks (``pipelines.stream_state.Applied``: last event
time wins per entity and sink). A failing store (Redis, the disk, the Feast database) leaves
its poll unacknowledged: the entries are claimed again after ``--claim-idle-ms``. Bad events,
records the towers refuse and events the sinks cannot take go to the dead-letter stream with
their reason; the rest flow. Production: the same pipeline on Flink or
Dataflow (``--runner``), Kafka or Pub/Sub through Beam's own IO connectors as the source
(``--source kafka|pubsub --source-config JSON``: ``pipelines.stream_sources``).
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.periodicsequence import PeriodicImpulse
from redis.exceptions import RedisError

from ebr.config import Workspace
from ebr.data.records import echo
from ebr.release.targets import Target, write_targets
from ebr.stream.events import BadEvent, Event, as_text, decode, latest
from pipelines.broker import GROUP, STREAM, Broker
from pipelines.deadletter import REASON_CHARS
from pipelines.stream_sinks import Embedded, Sinks, embed_events
from pipelines.stream_sources import SOURCES, ReadEntries, source_config
from pipelines.stream_state import Applied, KnownJobs

log = logging.getLogger(__name__)
DEFAULT_RUNNER = "DirectRunner"  # the local runner that runs an unbounded (streaming) pipeline
# Failures of the stores, not of an event: the poll is retried whole, later.
TRANSIENT = (RedisError, OSError, sqlite3.OperationalError)
BACKFILL_RETRY_S = 60.0  # a release still not brought up to date after this gets another
DRAIN_POLLS = 16  # full reads one impulse may make while a backlog lasts
FOREVER_S = 10 * 365 * 86400  # a long-running job's stop time; it runs until it is stopped


@dataclass(frozen=True)
class StreamOptions:
    """What the streaming job reads and how often."""

    workspace: str
    redis_url: str
    consumer: str = "embedder-1"  # this worker's name in the consumer group
    stream: str = STREAM
    group: str = GROUP
    poll_interval_s: float = 0.25  # one poll per impulse
    max_events: int = 512  # entries per poll: one element, one forward pass per model
    claim_idle_ms: int = 30_000  # entries pending this long are claimed again (a failed poll)
    feast_config: str = "feature_store.yaml"
    source: str = "redis"  # or kafka / pubsub (pipelines.stream_sources); Redis keeps the state
    source_config: str = ""  # JSON: what the kafka or pubsub source reads

    def broker(self) -> Broker:
        return Broker(self.redis_url, self.consumer, stream=self.stream, group=self.group,
                      claim_idle_ms=self.claim_idle_ms)  # fmt: skip


class Work(NamedTuple):
    """One poll on its way through the stages."""

    entry_ids: list[str]  # every entry of the poll that decoded (acknowledged at the end)
    events: list[Event]  # the latest event per entity among them
    targets: tuple[Target, ...] = ()
    embedded: Embedded | None = None
    backfill: tuple[str, ...] = ()  # releases this element brings up to date with the catalog


class _Poll(beam.DoFn):
    """impulse -> the entries of each read, up to ``max_events`` per element (this consumer's
    own pending ones first, after a restart: what it had read but not acknowledged when it
    stopped)."""

    def __init__(self, opts: StreamOptions) -> None:
        self._opts = opts

    def setup(self) -> None:
        self._broker = self._opts.broker()
        self._recovered = False

    def process(self, _impulse: Any) -> Iterable[list[tuple[str, dict[str, str]]]]:
        # With a backlog, one impulse drains up to DRAIN_POLLS full reads (each its own
        # element) within one poll interval: the impulse rate does not cap the throughput.
        size, until = self._opts.max_events, time.monotonic() + self._opts.poll_interval_s
        for poll in range(DRAIN_POLLS):
            try:
                if self._recovered:
                    entries = self._broker.read(size, block_ms=50 if poll == 0 else None)
                else:
                    entries, self._recovered = self._broker.pending(), True
            except RedisError:  # Redis restarting: poll again at the next impulse
                log.warning("could not read the stream (Redis down?); polling again")
                return
            for i in range(0, len(entries), size):
                yield [(eid, {as_text(k): as_text(v) for k, v in f.items()})
                       for eid, f in entries[i : i + size]]  # fmt: skip
            if len(entries) < size or time.monotonic() >= until:
                return


class _Decode(beam.DoFn):
    """entries -> ``Work`` (latest event per entity); each bad entry to the dead-letter stream
    with its reason, acknowledged there: one that breaks the event contract, and an update or
    close of a job that was never posted (``pipelines.stream_state.KnownJobs``)."""

    def __init__(self, opts: StreamOptions) -> None:
        self._opts = opts

    def setup(self) -> None:
        self._broker = self._opts.broker()
        self._known = KnownJobs(self._broker.client, Workspace(Path(self._opts.workspace)))

    def process(self, entries: list[tuple[str, dict[str, str]]]) -> Iterable[Work]:
        try:
            events, bad = decode(entries)
            events, unknown = self._known.split(events)
            self._broker.dead_letter(bad + unknown)
        except RedisError:  # Redis is down: the entries stay pending and are read again
            log.exception("could not reach Redis; %d entries stay pending", len(entries))
            return
        if events:
            yield Work([e.entry_id for e in events], latest(events))


class _Targets:
    """The releases to write, re-read when ``releases/state.json`` changes."""

    def __init__(self, ws: Workspace) -> None:
        self._ws, self._stamp, self._targets = ws, -1, ()

    def current(self) -> tuple[Target, ...]:
        path = self._ws.releases / "state.json"
        stamp = path.stat().st_mtime_ns if path.is_file() else 0
        if stamp != self._stamp:
            self._targets = tuple(write_targets(self._ws))
            self._stamp = stamp
            log.info("writing to releases %s", [t.release_id for t in self._targets])
        return self._targets


class _Embed(beam.DoFn):
    """``Work`` -> the same with every model's rows (``pipelines.stream_sinks.embed_events``);
    nothing when that fails (the entries stay pending and are claimed again).

    A release the job has not written to before (a candidate recorded, an arm added; every
    release on the job's first start) first gets a backfill element: the streamed catalog's
    latest event per entity, so it holds every change streamed before it joined. The sinks skip
    what it has already (an idempotent replay)."""

    def __init__(self, opts: StreamOptions) -> None:
        self._opts = opts

    def setup(self) -> None:
        self._ws = Workspace(Path(self._opts.workspace))
        self._targets = _Targets(self._ws)
        self._applied = Applied(self._opts.broker().client)
        self._cache: dict[Any, Any] = {}
        self._issued: dict[str, float] = {}  # release -> when its backfill was sent on

    def process(self, work: Work) -> Iterable[Work]:
        try:
            targets = self._targets.current()
            unseen = self._applied.unseen([t.release_id for t in targets])
            now = time.monotonic()  # one backfill in flight per release (again if it failed)
            late = [r for r in unseen if now - self._issued.get(r, now) >= BACKFILL_RETRY_S]
            new = [r for r in unseen if r not in self._issued] + late
            if new:
                self._issued.update(dict.fromkeys(new, now))
                yield self._backfill(tuple(t for t in targets if t.release_id in new))
            embedded = embed_events(self._ws, work.events, targets, self._cache)
        except Exception:  # retried as a failed sink is: the poll stays pending
            log.exception("embedding failed; %d entries stay pending", len(work.entry_ids))
            return
        yield work._replace(targets=targets, embedded=embedded)

    def _backfill(self, targets: tuple[Target, ...]) -> Work:
        events = self._applied.catalog_events()
        log.info("bringing %s up to date: %d streamed changes", [t.release_id for t in targets],
                 len(events))  # fmt: skip
        embedded = embed_events(self._ws, events, targets, self._cache)
        return Work([], events, targets, embedded, tuple(t.release_id for t in targets))


class _Write(beam.DoFn):
    """``Work`` -> its entry ids once every sink has its events.

    A failure of the stores themselves (Redis, the disk, the Feast database: ``TRANSIENT``)
    leaves the whole poll pending, claimed again later. Any other failure is an event the sinks
    cannot take: the poll's events are then written one by one, and each one that fails alone
    goes to the dead-letter stream with the exception; the others are applied."""

    def __init__(self, opts: StreamOptions) -> None:
        self._opts = opts

    def setup(self) -> None:
        ws = Workspace(Path(self._opts.workspace))
        self._broker = self._opts.broker()
        self._sinks = Sinks(ws, self._broker, self._opts.feast_config)
        self._lock = threading.Lock()  # one poll at a time through the sinks

    def teardown(self) -> None:
        self._sinks.close()

    def process(self, work: Work) -> Iterable[list[str]]:
        assert work.embedded is not None, "Embed runs first"
        with self._lock:
            try:
                try:
                    self._sinks.write(work.events, work.targets, work.embedded)
                except TRANSIENT:
                    raise
                except Exception:
                    log.exception("a poll failed its sinks; writing its events one by one")
                    self._one_by_one(work)
                self._sinks.applied.mark_seen(work.backfill)
            except TRANSIENT:  # retried: the poll stays pending until it is claimed again
                log.exception("a store failed; %d entries stay pending", len(work.entry_ids))
                return
        yield work.entry_ids

    def _one_by_one(self, work: Work) -> None:
        assert work.embedded is not None, "Embed runs first"
        bad = []
        for event in work.events:
            try:
                self._sinks.write([event], work.targets, work.embedded)
            except TRANSIENT:
                raise
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


def build(pipeline: beam.Pipeline, opts: StreamOptions, run_for_s: float | None) -> None:
    """The streaming graph on ``pipeline``; it runs ``run_for_s`` seconds (None: until it is
    stopped)."""
    if opts.source == "redis":
        start = time.time()
        stop = start + (run_for_s if run_for_s is not None else FOREVER_S)
        impulse = PeriodicImpulse(
            start_timestamp=start, stop_timestamp=stop, fire_interval=opts.poll_interval_s
        )
        entries = pipeline | "Impulse" >> impulse | "Poll" >> beam.ParDo(_Poll(opts))
    else:  # the runner acknowledges (commits offsets) as the source's connector does
        config = source_config(opts.source, opts.source_config)
        entries = pipeline | "Read" >> ReadEntries(opts.source, config, opts.group,
                                                   opts.max_events)  # fmt: skip
    written = (
        entries
        | "Decode" >> beam.ParDo(_Decode(opts))
        | "Embed" >> beam.ParDo(_Embed(opts))
        | "Write" >> beam.ParDo(_Write(opts))
    )
    if opts.source == "redis":
        _ = written | "Ack" >> beam.ParDo(_Ack(opts))


def run_stream(
    opts: StreamOptions, run_for_s: float | None = None, runner_options: list[str] | None = None
) -> None:
    """Run the streaming job (blocks until ``run_for_s`` passed or the process is stopped)."""
    if opts.poll_interval_s <= 0 or opts.max_events < 1:
        raise ValueError("poll_interval_s must be > 0 and max_events >= 1")
    source_config(opts.source, opts.source_config)  # a bad source fails before Beam starts
    Workspace(Path(opts.workspace))
    options = list(runner_options or [])
    if not any(o.startswith("--runner") for o in options):
        options.insert(0, f"--runner={DEFAULT_RUNNER}")
    options.append("--streaming")
    with beam.Pipeline(options=PipelineOptions(options)) as p:
        build(p, opts, run_for_s)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workspace", required=True, help="platform workspace root")
    p.add_argument("--redis-url", required=True, help="the event stream's Redis")
    p.add_argument("--consumer", default=StreamOptions.consumer)
    p.add_argument("--poll-interval-s", type=float, default=StreamOptions.poll_interval_s)
    p.add_argument("--max-events", type=int, default=StreamOptions.max_events)
    p.add_argument("--claim-idle-ms", type=int, default=StreamOptions.claim_idle_ms)
    p.add_argument("--feast-config", default=StreamOptions.feast_config)
    p.add_argument("--source", default="redis", choices=SOURCES, help="where events come from")
    p.add_argument("--source-config", default="", help="kafka / pubsub: JSON (stream_sources)")
    p.add_argument("--run-for-s", type=float, default=None, help="stop after (default: never)")
    args, beam_args = p.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    opts = StreamOptions(
        args.workspace, args.redis_url, args.consumer, poll_interval_s=args.poll_interval_s,
        max_events=args.max_events, claim_idle_ms=args.claim_idle_ms,
        feast_config=args.feast_config, source=args.source, source_config=args.source_config,
    )  # fmt: skip
    run_stream(opts, args.run_for_s, beam_args)


if __name__ == "__main__":
    main()
