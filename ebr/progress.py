"""Progress of long work (training epochs, items embedded, a slot's build and tuning) as log
records on the ``ebr.progress`` logger, so the core never depends on how it is shown.

The ``ebr`` command line (``cli.output.ProgressView``) draws them as rich progress bars; Flyte
tasks and tests leave the logger alone, and then a report costs one level check.

    report("train", advance=1, total=4, loss=3.21)    # one epoch of four done
    report("embed", advance=256, kind="jobs")         # 256 more items embedded
"""

from __future__ import annotations

import logging
from typing import Any

LOGGER = logging.getLogger("ebr.progress")


def report(task: str, *, advance: float = 0, total: float | None = None, **fields: Any) -> None:
    """One step of ``task``: ``advance`` units done (of ``total`` when known), with what the
    step measured (``fields``: loss, recall, ...), for whoever listens to ``LOGGER``."""
    if LOGGER.isEnabledFor(logging.INFO):
        step = {"task": task, "advance": advance, "total": total, **fields}
        LOGGER.info("%s", task, extra={"progress": step})
