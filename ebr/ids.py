"""The platform's one id contract: what a job id or a member id is, wherever one comes in.

An id is a JSON/Python integer (never a bool, a float such as ``10.0`` or a string such as
``"10"``) in ``[MIN_ID, MAX_ID]``. The stream's event contract (``ebr.stream.events``) and the
HTTP API (``serving.schemas``) both check ids against these two constants, so an id the stream
accepts is one the API can serve, and the other way round.
"""

from __future__ import annotations

from typing import Any

MIN_ID = 1  # ids start at 1 (the generated catalogue's and the API's); 0 is never an id
MAX_ID = 2**63 - 1  # int64 keys: Feast entities, FAISS id maps, slot logs


def id_problem(value: Any, name: str = "id") -> str | None:
    """Why ``value`` is not an id (a message naming ``name`` and the value), or None."""
    if isinstance(value, bool) or not isinstance(value, int):
        shown = repr(value) if isinstance(value, str | float) else type(value).__name__
        return f"{name} must be an integer in [{MIN_ID}, {MAX_ID}], got {shown[:60]}"
    if not MIN_ID <= value <= MAX_ID:
        shown = str(value) if abs(value) < 10**30 else f"<{value.bit_length()}-bit int>"
        return f"{name} must be an integer in [{MIN_ID}, {MAX_ID}], got {shown}"
    return None


def is_id(value: Any) -> bool:
    """Whether ``value`` holds the id contract."""
    return id_problem(value) is None
