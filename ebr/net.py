"""Local network helpers shared by the servers the platform starts (Redis, Ray Serve, HAProxy)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral() -> tuple[int, int]:
    """The kernel's range of source ports for outgoing connections (Linux; a default else)."""
    try:
        low, high = (int(x) for x in _RANGE.read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A TCP port free on loopback now, outside the kernel's ephemeral range: a port the OS
    hands out (bind to 0) is one any outgoing connection may take as its source port before
    the caller binds it (HAProxy once failed to start on such a port under a test suite's
    load). A caller binds it soon after."""
    low, _ = _ephemeral()
    rng = random.Random()
    for _ in range(200):
        # Below 20,000: serving.front.claim_ports hands out blocks from there up.
        port = rng.randrange(10_000, min(20_000, max(10_001, low)))
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
                return port
        except OSError:
            continue
    with socket.socket() as s:  # everything tried was taken: let the OS pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
