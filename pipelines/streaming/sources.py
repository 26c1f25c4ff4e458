"""Where the streaming job reads change events, selected by ``--source``:

- ``redis`` (default, what runs here): Redis Streams through a consumer group, polled by an
  impulse (``pipelines.streaming.pipeline._Poll``); the job acknowledges each entry after
  every sink has it.
- ``kafka``: Beam's ``ReadFromKafka`` (a cross-language transform: it needs Beam's Java
  expansion service, which this offline machine cannot fetch), ``--source-config
  '{"bootstrap_servers": "broker:9092", "topic": "ebr-events"}'``; offsets are committed by
  the runner (``commit_offset_in_finalize``).
- ``pubsub``: Beam's ``ReadFromPubSub`` (Dataflow; needs GCP credentials), ``--source-config
  '{"subscription": "projects/<project>/subscriptions/<name>"}'``; messages are acknowledged by
  the runner.

Every source yields the same elements: lists of ``(entry id, {"event": <json>})``, the id
``<ms>-<seq>`` (Kafka: record timestamp and offset; Pub/Sub: publish time), so decoding, the
sinks, their idempotency (Redis stays the state store: ``--redis-url``) and the dead letters
are the same whatever the source. Only the Redis source can run on this machine; the others
are built from the options (tested) and run where their brokers are.
"""

from __future__ import annotations

import json
from typing import Any

import apache_beam as beam

from ebr.stream.events import FIELD, as_text

SOURCES = ("redis", "kafka", "pubsub")
REQUIRED = {"kafka": ("bootstrap_servers", "topic"), "pubsub": ("subscription",)}


def source_config(source: str, text: str) -> dict[str, Any]:
    """``--source-config`` parsed and checked for ``source`` (ValueError naming the problem)."""
    if source not in SOURCES:
        raise ValueError(f"--source must be one of {SOURCES}, got {source!r}")
    try:
        config = json.loads(text or "{}")
    except ValueError as err:
        raise ValueError(f"--source-config is not JSON: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"--source-config must be a JSON object, got {type(config).__name__}")
    missing = [k for k in REQUIRED.get(source, ()) if not config.get(k)]
    if missing:
        raise ValueError(f"--source {source} needs {missing} in --source-config")
    return config


def kafka_entry(record: Any) -> tuple[str, dict[str, str]]:
    """A Kafka record (``with_metadata``) -> ``(<timestamp ms>-<offset>, {"event": value})``."""
    return f"{int(record.timestamp)}-{int(record.offset)}", {FIELD: as_text(record.value)}


def pubsub_entry(message: Any) -> tuple[str, dict[str, str]]:
    """A Pub/Sub message -> ``(<publish time ms>-<message id digits>, {"event": data})``."""
    ms = int(message.publish_time.timestamp() * 1000) if message.publish_time else 0
    seq = str(message.message_id or "0")
    return f"{ms}-{int(seq) if seq.isdigit() else 0}", {FIELD: as_text(message.data)}


class ReadEntries(beam.PTransform):
    """``kafka`` or ``pubsub`` -> lists of at most ``max_events`` entries (as the Redis poll
    makes them)."""

    def __init__(self, source: str, config: dict[str, Any], group: str, max_events: int) -> None:
        super().__init__()
        if source not in ("kafka", "pubsub"):
            raise ValueError(f"ReadEntries reads kafka or pubsub, not {source!r}")
        self.source, self.config = source, source_config(source, json.dumps(config))
        self.group, self.max_events = group, max_events

    def reader(self) -> beam.PTransform:
        """Beam's own IO connector for the source, configured."""
        if self.source == "kafka":
            from apache_beam.io.kafka import ReadFromKafka

            consumer = {"bootstrap.servers": self.config["bootstrap_servers"],
                        "group.id": self.config.get("group", self.group)}  # fmt: skip
            return ReadFromKafka(consumer_config=consumer, topics=[self.config["topic"]],
                                 with_metadata=True, commit_offset_in_finalize=True)  # fmt: skip
        from apache_beam.io.gcp.pubsub import ReadFromPubSub

        return ReadFromPubSub(subscription=self.config["subscription"], with_attributes=True)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        entry = kafka_entry if self.source == "kafka" else pubsub_entry
        return (
            pbegin
            | "Read" >> self.reader()
            | "Entry" >> beam.Map(entry)
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.max_events)
        )
