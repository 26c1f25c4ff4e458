"""Beam streaming inference: catalogue and profile changes into every serving release, in seconds.

    python -m pipelines.streaming.pipeline --workspace var/demo --redis-url redis://127.0.0.1:6390/0
        [--consumer embedder-1] [--poll-interval-s 0.25] [--run-for-s 600]

Reads change events (``ebr.stream.events``) from the Redis stream's consumer group and, for
every release not retired (``ebr.release.targets``: live, experiment arms, standby and
candidates, re-read whenever ``releases/state.json`` changes, no restart):

- job posted / updated: embeds the job with the release's item tower, appends an upsert to the
  release's slot log and pushes the row to its ``job_embedding_<v>`` Feast view;
- job closed: a tombstone in the slot log; the catalogue row goes inactive;
- member profile updated: the profile row, the member-interest embedding of the co-trained
  interest model and the release's member embedding (request tower, no query) in Feast.

Stages (``apply_polls``): ``Poll -> Decode -> Embed -> Write -> Ack``. One element is one poll
of the stream (up to ``--max-events`` entries) and stays whole from source to acknowledgement,
so an entry is acknowledged only after every sink has it, without a barrier across elements.
The job runs these same stages in one of two forms (``--mode``, default ``auto``):

- ``micro-batch`` (``auto`` with the Redis source on a local runner: what runs here): the job
  reads the stream itself and runs each read as a bounded pipeline on the in-process
  FnApiRunner (``pipelines.streaming.local``). Beam's local runner in streaming mode does not
  hold memory (~360 MB a minute for a no-op pipeline, STACK.md): it cannot run for hours.
- ``unbounded`` (``auto`` with ``--runner`` Flink or Dataflow, or a kafka / pubsub source):
  ``PeriodicImpulse -> Poll -> ...`` as one streaming pipeline. Measured on the local
  DirectRunner (2 cores, Beam 2.77): the impulse-driven poll emits incrementally; a fan-out
  per release re-joined by a windowed GroupByKey before the acknowledgement would hold every
  group until the job stops; a processing-time trigger fails there (its trigger has no clock).
  While a backlog lasts one impulse drains up to ``DRAIN_POLLS`` reads (~3,000 events/s).

Embedding runs the batch pipelines' transform (``pipelines.towers.EmbedTowers``: featurize,
one forward pass, output check) on the poll's records per model version, so stream and batch
rows are the same. ``pipelines.streaming.stages`` holds the stages after Decode; their
expensive state (Feast store, slot writers) is made once per process
(``pipelines.streaming.shared``; towers: ``pipelines.towers.tower``).

Delivery is at-least-once with idempotent sinks (``pipelines.streaming.state.Applied``: last event
time wins per entity and sink). A failing store (Redis, the disk, the Feast database) leaves
its poll unacknowledged: the entries are claimed again after ``--claim-idle-ms``. Bad events,
records the towers refuse and events the sinks cannot take go to the dead-letter stream with
their reason; the rest flow. Retry budget: once an entry has been delivered
``--max-deliveries`` times (XPENDING), a failure no longer leaves its poll pending: the poll's
events are embedded and written one by one, and each that still fails while its entry's budget
is spent is dead-lettered with the exception; the others are applied. Production: the same
stages on Flink or Dataflow (``--runner``), Kafka or Pub/Sub through Beam's own IO connectors
as the source (``--source kafka|pubsub --source-config JSON``: ``pipelines.streaming.sources``).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.transforms.periodicsequence import PeriodicImpulse
from redis.exceptions import RedisError

from ebr.config import Workspace
from ebr.stream.events import as_text
from pipelines.streaming.embed_stage import Embed
from pipelines.streaming.shared import close_shared
from pipelines.streaming.sources import SOURCES, ReadEntries, source_config
from pipelines.streaming.stages import StreamOptions, Work, _Ack, _Write
from pipelines.streaming.state import KnownJobs, decode_poll

log = logging.getLogger(__name__)
DEFAULT_RUNNER = "DirectRunner"  # the local runner that runs an unbounded (streaming) pipeline
LOCAL_RUNNERS = ("DirectRunner", "FnApiRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")
MODES = ("auto", "micro-batch", "unbounded")
DRAIN_POLLS = 16  # full reads one impulse (or one micro-batch) may make while a backlog lasts
FOREVER_S = 10 * 365 * 86400  # a long-running job's stop time; it runs until it is stopped


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
            yield from as_polls(entries, size)
            if len(entries) < size or time.monotonic() >= until:
                return


def as_polls(entries: list[tuple[str, dict[Any, Any]]], size: int) -> list[list[Any]]:
    """Entries read from Redis -> polls (elements) of at most ``size``, their fields as text."""
    text = [(eid, {as_text(k): as_text(v) for k, v in f.items()}) for eid, f in entries]
    return [text[i : i + size] for i in range(0, len(text), size)]


class _Decode(beam.DoFn):
    """entries -> ``Work`` (latest event per entity); each bad entry to the dead-letter stream
    with its reason, acknowledged there: one that breaks the event contract (or fails to decode
    at all), and an update or close of a job that was never posted (held for its posting:
    ``pipelines.streaming.state.KnownJobs``)."""

    def __init__(self, opts: StreamOptions) -> None:
        self._opts = opts

    def setup(self) -> None:
        self._broker = self._opts.broker()
        self._known = KnownJobs(self._broker.client, Workspace(Path(self._opts.workspace)))

    def process(self, entries: list[tuple[str, dict[str, str]]]) -> Iterable[Work]:
        # Nothing one entry holds raises here: whatever fails on it is its dead letter
        # (``decode_poll`` isolates the entry at fault); only Redis being down leaves the poll
        # pending, read again later.
        try:
            entry_ids, events, bad = decode_poll(entries, self._known)
            self._broker.dead_letter(bad)
        except RedisError:  # Redis is down: the entries stay pending and are read again
            log.exception("could not reach Redis; %d entries stay pending", len(entries))
            return
        if events:
            yield Work(entry_ids, events)


def apply_polls(polls: beam.PCollection, opts: StreamOptions, ack: bool) -> beam.PCollection:
    """The stages every form of the job shares: polls -> Decode -> Embed -> Write (-> Ack, for
    the Redis source; other sources are acknowledged by their connector)."""
    written = (
        polls
        | "Decode" >> beam.ParDo(_Decode(opts))
        | "Embed" >> Embed(opts)
        | "Write" >> beam.ParDo(_Write(opts))
    )
    return written | "Ack" >> beam.ParDo(_Ack(opts)) if ack else written


def build(pipeline: beam.Pipeline, opts: StreamOptions, run_for_s: float | None) -> None:
    """The unbounded graph on ``pipeline``; it runs ``run_for_s`` seconds (None: until it is
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
    apply_polls(entries, opts, ack=opts.source == "redis")


def micro_batch(opts: StreamOptions, runner_options: list[str], mode: str = "auto") -> bool:
    """Whether the job runs as micro-batches (``pipelines.streaming.local``) rather than as one
    unbounded pipeline: ``auto`` picks them for the Redis source on a local runner."""
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {MODES}, got {mode!r}")
    runner = PipelineOptions(runner_options).view_as(StandardOptions).runner
    local = runner is None or str(runner).rsplit(".", 1)[-1] in LOCAL_RUNNERS
    if mode == "micro-batch" and not (local and opts.source == "redis"):
        raise ValueError(f"--mode micro-batch reads the redis source on a local runner, got "
                         f"--source {opts.source!r} and --runner {runner!r}")  # fmt: skip
    return mode != "unbounded" and local and opts.source == "redis"


def run_stream(
    opts: StreamOptions,
    run_for_s: float | None = None,
    runner_options: list[str] | None = None,
    mode: str = "auto",
) -> None:
    """Run the streaming job (blocks until ``run_for_s`` passed or the process is stopped)."""
    if opts.poll_interval_s <= 0 or opts.max_events < 1 or opts.max_deliveries < 1:
        raise ValueError(
            f"poll_interval_s must be > 0, max_events >= 1 and max_deliveries >= 1, got "
            f"{opts.poll_interval_s}, {opts.max_events} and {opts.max_deliveries}"
        )
    source_config(opts.source, opts.source_config)  # a bad source fails before Beam starts
    Workspace(Path(opts.workspace))
    options = list(runner_options or [])
    try:
        if micro_batch(opts, options, mode):
            from pipelines.streaming.local import run_local

            run_local(opts, run_for_s, options)
            return
        if PipelineOptions(options).view_as(StandardOptions).runner is None:
            options.insert(0, f"--runner={DEFAULT_RUNNER}")
        options.append("--streaming")
        with beam.Pipeline(options=PipelineOptions(options)) as p:
            build(p, opts, run_for_s)
    finally:
        close_shared()  # slot writers closed, Redis clients let go


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workspace", required=True, help="platform workspace root")
    p.add_argument("--redis-url", required=True, help="the event stream's Redis")
    p.add_argument("--consumer", default=StreamOptions.consumer)
    p.add_argument("--poll-interval-s", type=float, default=StreamOptions.poll_interval_s)
    p.add_argument("--max-events", type=int, default=StreamOptions.max_events)
    p.add_argument("--claim-idle-ms", type=int, default=StreamOptions.claim_idle_ms)
    p.add_argument("--max-deliveries", type=int, default=StreamOptions.max_deliveries,
                   help="retry budget of a failing entry, in deliveries")  # fmt: skip
    p.add_argument("--feast-config", default=StreamOptions.feast_config)
    p.add_argument("--source", default="redis", choices=SOURCES, help="where events come from")
    p.add_argument("--source-config", default="", help="kafka / pubsub: JSON (stream_sources)")
    p.add_argument("--mode", default="auto", choices=MODES,
                   help="micro-batch (local runner) or one unbounded pipeline")  # fmt: skip
    p.add_argument("--run-for-s", type=float, default=None, help="stop after (default: never)")
    args, beam_args = p.parse_known_args(argv)
    # force: an import (Beam's GCP extras) may have configured the root logger at WARNING
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    for chatty in ("apache_beam", "feast"):  # lines per micro-batch or per Feast push
        logging.getLogger(chatty).setLevel(logging.WARNING)
    opts = StreamOptions(
        args.workspace, args.redis_url, args.consumer, poll_interval_s=args.poll_interval_s,
        max_events=args.max_events, claim_idle_ms=args.claim_idle_ms,
        feast_config=args.feast_config, source=args.source, source_config=args.source_config,
        max_deliveries=args.max_deliveries,
    )  # fmt: skip
    run_stream(opts, args.run_for_s, beam_args, args.mode)


if __name__ == "__main__":
    main()
