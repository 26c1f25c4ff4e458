"""Streaming wing: the change-event stream into every serving release, in seconds.

- ``broker``: Redis Streams (consumer group, retries, dead letters); ``sources``: Kafka and
  Pub/Sub read by Beam instead; ``produce``: the producer command.
- ``pipeline``: the Beam job (Decode -> Embed -> Write -> Ack) and its command; ``stages``:
  those stages; ``local``: the same stages as a loop of bounded micro-batches on one machine.
- ``sinks``: slot logs, Feast views and the catalogue; ``state``: what each sink applied
  (idempotent at-least-once delivery); ``shared``: what a worker process holds once.
- ``job``: start, status, stop and compact the running job (the Flyte tasks call these).

The event contract is ``ebr.stream.events``; embedding runs the batch wing's steps
(``pipelines.towers``); a compacted slot's log hand-over is ``ebr.index.live``'s.
"""
