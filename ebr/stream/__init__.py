"""Streaming Feature Cloud: catalogue and profile change events (``events``: their contract,
no broker). The broker adapter (Redis Streams) is ``pipelines/streaming/broker.py``."""
