"""The streaming job on one machine: a loop of micro-batches, each a bounded Beam pipeline.

    python -m pipelines.streaming.pipeline --workspace var/demo --redis-url URL  (--mode auto)

Why not one unbounded pipeline here: Beam's local runner in streaming mode does not hold
memory. ``PeriodicImpulse | Map(noop)`` with ``streaming=True`` on the local DirectRunner grew
~360 MB of RSS a minute (STACK.md); the demo's job went from 1.2 to 8.0 GB in 42 idle minutes
(issue 20). On Flink or Dataflow the job keeps its unbounded form
(``pipelines.streaming.pipeline.build``).
Here it loops:

1. read: after a start, this consumer's own pending entries (read but not acknowledged when it
   stopped); then up to ``max_events`` entries, those left pending past ``claim_idle_ms`` first
   (XAUTOCLAIM), waiting up to ``IDLE_WAIT_S`` for new ones (XREADGROUP BLOCK: an idle job
   sleeps in Redis and runs no pipeline); while reads come back full (a backlog), up to
   ``DRAIN_POLLS`` reads in one micro-batch;
2. run them through the bounded graph ``Impulse -> Polls -> Decode -> Embed -> Write -> Ack``:
   the stages of the unbounded form (``pipelines.streaming.pipeline.apply_polls``), one element
   per read,
   on the in-process FnApiRunner;
3. at most one micro-batch per ``poll_interval_s``: a run costs Beam itself ~35 ms of a core.

The graph is built once, to its runner proto, and each run takes its reads from this process's
inbox (``_INBOX``): ~34 ms a run, against ~100 ms for a ``beam.Create(polls)`` pipeline built
for every micro-batch (5 fused stages, measured here). The stages' state (towers, Feast store,
slot writers, the Redis client) lives for the process (``pipelines.streaming.shared``), so a run
sets them up at no cost; ``benchmarks/stream_soak.py`` measures the job's memory over hours.

A run that raises (a stage let an exception escape; the stages themselves dead-letter bad
events and leave failed polls pending) is split: its reads run again in halves, down to single
entries. An entry that fails alone stays pending (claimed again later) until it has been
delivered ``max_deliveries`` times; then it is dead-lettered with the exception. A run that
fails with no entry at all is the job's own fault: it raises. SIGTERM (``pipelines.streaming.job
stop``) ends the loop after the current micro-batch; the slot writers are closed.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms.environments import EmbeddedPythonEnvironment
from redis.exceptions import RedisError

from ebr.stream.events import FIELD
from pipelines.streaming.broker import Broker
from pipelines.streaming.pipeline import DRAIN_POLLS, apply_polls, as_polls
from pipelines.streaming.shared import close_shared
from pipelines.streaming.stages import StreamOptions, gave_up

log = logging.getLogger(__name__)
IDLE_WAIT_S = 1.0  # longest wait in Redis for new entries: also how soon a stop is seen
Poll = list[tuple[str, dict[str, str]]]  # one read: (entry id, fields) pairs, one element
_INBOX: dict[str, list[Poll]] = {}  # graph key -> the reads of its current run


class _Inbox(beam.DoFn):
    """impulse -> this run's reads (handed over in-process: the runner runs in this process)."""

    def __init__(self, key: str) -> None:
        self._key = key

    def process(self, _impulse: bytes) -> Iterable[Poll]:
        yield from _INBOX.pop(self._key, [])


class MicroBatches:
    """The bounded graph over the job's stages, built once; ``run`` runs it over some reads."""

    def __init__(self, opts: StreamOptions, runner_options: list[str] | None = None) -> None:
        self._key = uuid.uuid4().hex
        self._options = PipelineOptions(runner_options or [])
        self._runner = FnApiRunner()  # in-process, bounded: never Prism's download (STACK.md)
        pipeline = beam.Pipeline(runner=self._runner, options=self._options)
        polls = pipeline | "Impulse" >> beam.Impulse() | "Polls" >> beam.ParDo(_Inbox(self._key))
        apply_polls(polls, opts, ack=True)
        self._proto = pipeline.to_runner_api(
            default_environment=EmbeddedPythonEnvironment.default()
        )

    def run(self, polls: list[Poll]) -> None:
        """Decode, embed, write and acknowledge ``polls`` (raises what a stage let escape)."""
        _INBOX[self._key] = polls
        try:
            self._runner.run_via_runner_api(self._proto, self._options).wait_until_finish()
        finally:
            _INBOX.pop(self._key, None)


class Reader:
    """The job's reads of the stream: its own pending entries first, then new and reclaimed
    ones, no more often than once per ``poll_interval_s`` (unless Redis waited for them)."""

    def __init__(self, broker: Broker, opts: StreamOptions) -> None:
        self._broker, self._opts = broker, opts
        self._recovered, self._next = False, 0.0

    def polls(self, stop: threading.Event) -> list[Poll]:
        """The next micro-batch's reads ([] when none came within ``IDLE_WAIT_S``)."""
        size = self._opts.max_events
        stop.wait(max(0.0, self._next - time.monotonic()))
        try:
            if not self._recovered:
                entries, self._recovered = self._broker.pending(), True
            else:
                entries = self._broker.read(size, block_ms=int(IDLE_WAIT_S * 1000))
        except RedisError:  # Redis restarting: read again after a while
            log.warning("could not read the stream (Redis down?); reading again")
            stop.wait(IDLE_WAIT_S)
            return []
        polls = as_polls(entries, size)
        while len(entries) >= size and len(polls) < DRAIN_POLLS and self._recovered:
            try:
                entries = self._broker.read(size, block_ms=None)
            except RedisError:
                break
            polls += as_polls(entries, size)
        if polls:
            self._next = time.monotonic() + self._opts.poll_interval_s
        return polls


def settle(batches: MicroBatches, broker: Broker, opts: StreamOptions, polls: list[Poll]) -> None:
    """Run ``polls``; when the run raises, run them again in halves down to single entries (an
    entry that fails alone: ``_fail_alone``). Raises when a run without entries fails too."""
    try:
        batches.run(polls)
        return
    except Exception as err:
        log.exception("a micro-batch of %d entries failed; running it in parts", _count(polls))
        failure = err
    try:
        batches.run([])
    except Exception as err:
        raise RuntimeError(f"the bounded pipeline fails without any entry: {err}") from err
    _split(batches, broker, opts, polls, failure)


def _split(
    batches: MicroBatches, broker: Broker, opts: StreamOptions, polls: list[Poll], err: Exception
) -> None:
    if len(polls) == 1 and len(polls[0]) == 1:
        _fail_alone(broker, opts, polls[0][0], err)
        return
    if len(polls) > 1:
        half = len(polls) // 2
        parts = [polls[:half], polls[half:]]
    else:
        half = len(polls[0]) // 2
        parts = [[polls[0][:half]], [polls[0][half:]]]
    for part in parts:
        try:
            batches.run(part)
        except Exception as part_err:
            _split(batches, broker, opts, part, part_err)


def _fail_alone(
    broker: Broker, opts: StreamOptions, entry: tuple[str, dict[str, str]], err: Exception
) -> None:
    """An entry the job fails on by itself: dead-lettered with ``err`` once it was delivered
    ``max_deliveries`` times, else left pending (claimed again after ``claim_idle_ms``)."""
    entry_id, fields = entry
    try:
        n = broker.deliveries([entry_id]).get(entry_id)
        if n is None:  # not pending (acknowledged meanwhile): nothing to do
            return
        if n < opts.max_deliveries:
            log.warning("entry %s failed alone (delivery %d of %d); it stays pending: %s",
                        entry_id, n, opts.max_deliveries, err)  # fmt: skip
            return
        broker.dead_letter([gave_up(entry_id, n, "the job", err, fields.get(FIELD))])
        log.warning("entry %s dead-lettered after %d deliveries: %s", entry_id, n, err)
    except RedisError:
        log.warning("could not reach Redis; entry %s stays pending", entry_id)


def _count(polls: list[Poll]) -> int:
    return sum(len(p) for p in polls)


class _Term:
    """Whether SIGTERM came: a plain flag (a signal handler must take no lock, so it does not
    set a ``threading.Event``; the loop sees the flag within ``IDLE_WAIT_S``)."""

    def __init__(self) -> None:
        self.came, self.previous = False, None
        if threading.current_thread() is threading.main_thread():  # handlers live there only
            self.previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.came = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def run_local(
    opts: StreamOptions,
    run_for_s: float | None = None,
    runner_options: list[str] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run the job as micro-batches until ``run_for_s`` passed, ``stop`` is set or SIGTERM
    came (each ends the loop after the current micro-batch)."""
    stop, term = stop or threading.Event(), _Term()
    end = None if run_for_s is None else time.monotonic() + run_for_s
    batches, broker = MicroBatches(opts, runner_options), opts.broker()
    reader, runs, entries = Reader(broker, opts), 0, 0
    log.info("streaming as micro-batches (bounded pipelines on the FnApiRunner)")
    try:
        while not (stop.is_set() or term.came or (end is not None and time.monotonic() >= end)):
            polls = reader.polls(stop)
            if polls:
                settle(batches, broker, opts, polls)
                runs, entries = runs + 1, entries + _count(polls)
    finally:
        term.restore()
        close_shared()
        log.info("stopped after %d micro-batches, %d entries", runs, entries)
