"""Write change events to the event stream (Redis Streams): the producer command.

    python -m pipelines.produce --redis-url redis://127.0.0.1:6390/0 --file events.jsonl

Each input line is one event, ``{"kind", "id", "event_time", "record"}`` (``ebr.stream.events``);
it is appended as is: the streaming job checks it and dead-letters what breaks the contract,
so a producer never has to. Prints how many entries were appended and the last entry id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ebr.stream.events import FIELD
from pipelines.broker import STREAM, Broker


def produce_lines(broker: Broker, lines: list[str]) -> list[str]:
    """Append each non-empty line as one entry (its text is the event field); -> entry ids."""
    return [broker.produce({FIELD: line.strip()}) for line in lines if line.strip()]


def main(
    redis_url: Annotated[str, typer.Option(help="the broker, e.g. redis://127.0.0.1:6390/0")],
    file: Annotated[Path, typer.Option(help="JSON lines, one event each")],
    stream: Annotated[str, typer.Option(help="stream key")] = STREAM,
) -> None:
    """Append the events of FILE to the stream."""
    broker = Broker(redis_url, "producer", stream=stream)
    ids = produce_lines(broker, file.read_text().splitlines())
    typer.echo(json.dumps({"appended": len(ids), "last_entry_id": ids[-1] if ids else None}))


if __name__ == "__main__":
    typer.run(main)
