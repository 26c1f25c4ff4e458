"""Local network helpers shared by the servers the platform starts (Redis, Ray Serve, HAProxy)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port free on loopback now (the OS picks it; a caller binds it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
