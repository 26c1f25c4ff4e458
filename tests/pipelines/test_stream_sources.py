"""The streaming job's source is chosen by options: Redis Streams (runs here), or Kafka and
Pub/Sub through Beam's own connectors (built from the options here; they run where their
brokers are). Every source hands the same entries to the same decoding."""

from __future__ import annotations

from datetime import UTC, datetime

import apache_beam as beam
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage

from ebr.stream.events import FIELD, decode, encode
from pipelines.streaming.pipeline import StreamOptions, build, run_stream
from pipelines.streaming.sources import ReadEntries, kafka_entry, pubsub_entry, source_config

T0 = datetime(2026, 11, 30, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    "source, text, problem",
    [
        ("kinesis", "{}", "--source must be one of"),
        ("kafka", "{not json", "not JSON"),
        ("kafka", "[1]", "must be a JSON object"),
        ("kafka", '{"topic": "ebr-events"}', "needs ['bootstrap_servers']"),
        ("pubsub", "{}", "needs ['subscription']"),
    ],
)
def test_a_bad_source_option_is_refused_naming_it(source: str, text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        source_config(source, text)
    opts = StreamOptions("var/none", "redis://127.0.0.1:1/0", source=source, source_config=text)
    with pytest.raises(ValueError):
        run_stream(opts, run_for_s=0.1)  # refused before any Beam work


def test_kafka_and_pubsub_are_beams_own_connectors_configured_from_the_options() -> None:
    kafka = ReadEntries("kafka", {"bootstrap_servers": "broker:9092", "topic": "ebr-events"},
                        "ebr-embedder", 64).reader()  # fmt: skip
    assert type(kafka).__name__ == "ReadFromKafka"
    assert "kafka_read_with_metadata" in kafka._urn
    for value in (b"broker:9092", b"ebr-events", b"ebr-embedder"):
        assert value in kafka._payload
    sub = "projects/ebr-project/subscriptions/ebr-events"
    pubsub = ReadEntries("pubsub", {"subscription": sub}, "g", 64).reader()
    assert type(pubsub).__name__ == "ReadFromPubSub" and pubsub.with_attributes


def test_every_source_hands_decode_the_same_entries() -> None:
    fields = encode("job_closed", 7, T0)
    record = beam.Row(
        key=None, value=fields[FIELD].encode(), topic="ebr-events", partition=0, offset=41,
        timestamp=1_796_000_000_000, timestampType=0, headers=[],
    )  # fmt: skip
    message = PubsubMessage(fields[FIELD].encode(), {}, message_id="1234", publish_time=T0)
    for entry_id, got in (kafka_entry(record), pubsub_entry(message)):
        assert got == fields
        events, bad = decode([(entry_id, got)])
        assert not bad and events[0].entity == ("job", 7)
    assert kafka_entry(record)[0] == "1796000000000-41"


def test_the_redis_source_is_polled_and_acknowledged() -> None:
    pipeline = beam.Pipeline()
    build(pipeline, StreamOptions("var/none", "redis://127.0.0.1:1/0"), run_for_s=1)
    labels = {t.full_label for t in pipeline.transforms_stack[0].parts}
    assert {"Impulse", "Poll", "Decode", "Embed", "Write", "Ack"} <= labels
