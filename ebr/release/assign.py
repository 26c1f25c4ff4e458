"""Experiment arm assignment: deterministic, sticky, independent across experiments.

A request's unit is its member id, or for an anonymous request its request key (a session or
cookie id the client sends). The unit is hashed with the experiment's salt (sha256) into a
point of [0, 1); the arms own consecutive slices of [0, 1) in their listed order, as wide as
their weights. The same unit lands in the same arm on every request, in every replica and
after restarts; a new salt reshuffles units independently of the previous experiment.

    arm = assign(state["experiment"], member_id=42)   # {"arm": ..., "release": ..., ...}
"""

from __future__ import annotations

import hashlib
from typing import Any

HASH_DIGITS = 15  # hex digits of the digest used: 60 bits, exact in a float's mantissa


def bucket(salt: str, unit: str) -> float:
    """The point in [0, 1) that ``unit`` hashes to under ``salt``."""
    digest = hashlib.sha256(f"{salt}\x1f{unit}".encode()).hexdigest()[:HASH_DIGITS]
    return int(digest, 16) / 16**HASH_DIGITS


def unit_of(member_id: int | None, request_key: str | None) -> str:
    """The randomisation unit: the member when known, else the request key."""
    if member_id is not None:
        return f"member:{int(member_id)}"
    if request_key:
        return f"key:{request_key}"
    raise ValueError("an experiment request needs a member_id or a request key")


def assign(
    experiment: dict[str, Any], member_id: int | None = None, request_key: str | None = None
) -> dict[str, Any]:
    """The arm (``{"arm", "release", "weight"}``) of the unit of this request."""
    point = bucket(experiment["salt"], unit_of(member_id, request_key))
    edge = 0.0
    for arm in experiment["arms"]:
        edge += float(arm["weight"])
        if point < edge:
            return dict(arm)
    return dict(experiment["arms"][-1])  # weights sum to 1 up to rounding
