"""Write change events to the event stream (Redis Streams): the producer command.

    python -m pipelines.streaming.produce --redis-url redis://127.0.0.1:6390/0 --file events.jsonl
    python -m pipelines.streaming.produce --redis-url redis://127.0.0.1:6390/0 --live var/demo \\
        --rate 20 --seconds 60

With ``--file`` each input line is one event, ``{"kind", "id", "event_time", "record"}``
(``ebr.stream.events``); it is appended as is: the streaming job checks it and dead-letters
what breaks the contract, so a producer never has to. With ``--live WORKSPACE`` it sends
marketplace-like traffic over that workspace's tables (``ebr.stream.traffic``: postings of
freshly generated jobs, edits, closures, profile changes) at ``--rate`` events/s for
``--seconds``. Prints how many entries were appended and the last entry id.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from ebr.stream.events import FIELD
from ebr.stream.traffic import Traffic
from pipelines.streaming.broker import STREAM, Broker


def produce_lines(broker: Broker, lines: list[str]) -> list[str]:
    """Append each non-empty line as one entry (its text is the event field); -> entry ids."""
    return [broker.produce({FIELD: line.strip()}) for line in lines if line.strip()]


def produce_live(broker: Broker, workspace: Path, rate: float, seconds: float,
                 seed: int = 11) -> list[str]:  # fmt: skip
    """Marketplace-like traffic over ``workspace``'s tables at ``rate`` events/s."""
    if rate <= 0 or seconds < 0:
        raise ValueError(f"rate must be > 0 and seconds >= 0, got {rate}, {seconds}")
    data = workspace / "data"
    traffic = Traffic(pd.read_parquet(data / "jobs.parquet"),
                      pd.read_parquet(data / "members.parquet"), seed)  # fmt: skip
    ids, start = [], time.monotonic()
    for i, entry in enumerate(traffic.stream()):
        due = start + i / rate
        if due - start >= seconds:
            break
        time.sleep(max(0.0, due - time.monotonic()))
        ids.append(broker.produce(entry))
    return ids


def main(
    redis_url: Annotated[str, typer.Option(help="the broker, e.g. redis://127.0.0.1:6390/0")],
    file: Annotated[Path | None, typer.Option(help="JSON lines, one event each")] = None,
    live: Annotated[Path | None, typer.Option(help="workspace to send live traffic over")] = None,
    rate: Annotated[float, typer.Option(help="--live: events per second")] = 20.0,
    seconds: Annotated[float, typer.Option(help="--live: for how long")] = 60.0,
    seed: Annotated[int, typer.Option(help="--live: traffic seed")] = 11,
    stream: Annotated[str, typer.Option(help="stream key")] = STREAM,
) -> None:
    """Append the events of FILE, or live traffic over a workspace, to the stream."""
    if (file is None) == (live is None):
        raise typer.BadParameter("give exactly one of --file and --live")
    broker = Broker(redis_url, "producer", stream=stream)
    if file is not None:
        ids = produce_lines(broker, file.read_text().splitlines())
    else:
        assert live is not None
        ids = produce_live(broker, live, rate, seconds, seed)
    typer.echo(json.dumps({"appended": len(ids), "last_entry_id": ids[-1] if ids else None}))


if __name__ == "__main__":
    typer.run(main)
