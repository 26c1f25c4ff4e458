"""What the streaming job's DoFns hold for the whole process: the Feast store, slot writers,
Redis clients, member histories (towers: ``pipelines.towers.tower``).

Run locally, the job runs every micro-batch as a bounded Beam pipeline of its own
(``pipelines.streaming.local``), and Beam sets each run's DoFns up from scratch: loading towers,
opening the Feast store and replaying slot logs per micro-batch would cost seconds each time
(and opening a slot's log twice for writing is refused by its lock). So a DoFn's ``setup``
takes these from here: made once per process and ``StreamOptions``, shared by every run and
every DoFn instance (on Flink or Dataflow: by the instances in one worker process), closed when
the job stops (``close_shared``). ``apache_beam.utils.shared.Shared`` keeps only weak
references (and one object alive at a time), which a run's end would drop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
_LOCK = threading.RLock()  # a maker may take another shared object (the Redis client)
_HELD: dict[tuple[str, Hashable], Any] = {}


def shared(kind: str, key: Hashable, make: Callable[[], T]) -> T:
    """The process's ``kind`` object for ``key`` (e.g. the job's ``StreamOptions``), made by
    ``make`` the first time. ``make`` runs under the lock: two DoFn instances never make the
    same one twice (two writers of one slot log would collide)."""
    with _LOCK:
        if (kind, key) not in _HELD:
            _HELD[kind, key] = make()
        return _HELD[kind, key]  # type: ignore[no-any-return]


def close_shared() -> None:
    """Close and forget every shared object that has a ``close`` (slot writers, Redis
    clients); the next ``shared`` call makes a new one."""
    with _LOCK:
        held = list(_HELD.values())
        _HELD.clear()
    for obj in held:
        close = getattr(obj, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # closing the rest matters more than this one's error
                log.exception("could not close %s", type(obj).__name__)
