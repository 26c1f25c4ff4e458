"""How the ``ebr`` command line talks: results as rich tables (or JSON with ``--json``),
long work as rich progress bars (``ebr.progress`` reports), mistakes as one line.

Exit codes: 0 done; 1 the work could not be done (a refused gate, a missing file: ``error:``
and why); 2 bad arguments (``error:`` naming the option), never a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ebr.progress import LOGGER

P = ParamSpec("P")
R = TypeVar("R")

# Set by the root command's --json for the one invocation this process runs.
MODE = {"json": False}
OUT = Console(soft_wrap=True)
ERR = Console(stderr=True, soft_wrap=True)  # an error stays one line


def emit(obj: Any, title: str | None = None, columns: Sequence[str] | None = None) -> None:
    """Print a command's result: JSON with ``--json``; otherwise a list of records as a table
    (``columns``, default every key), a mapping as key/value rows, anything else as text."""
    if MODE["json"]:
        typer.echo(json.dumps(obj, indent=2, default=str))
        return
    if isinstance(obj, list) and not obj:
        OUT.print(f"{title}: none" if title else "none")
    elif isinstance(obj, list) and all(isinstance(r, Mapping) for r in obj):
        cols = list(columns or dict.fromkeys(k for r in obj for k in r))
        table = Table(title=title, show_lines=False)
        for c in cols:
            table.add_column(c, overflow="fold")
        for r in obj:
            table.add_row(*(_cell(r.get(c)) for c in cols))
        OUT.print(table)
    elif isinstance(obj, Mapping):
        table = Table(title=title, show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        for k, v in obj.items():
            table.add_row(str(k), _cell(v))
        OUT.print(table)
    else:
        OUT.print(str(obj))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping | list):
        return json.dumps(value, default=str)
    return str(value)


def operator_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Work that cannot be done (a refused gate, an unknown release, a missing or unreadable
    file, a job already running) ends the command with ``error: <why>`` and exit 1."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (ValueError, KeyError, OSError, RuntimeError, LookupError) as err:
            ERR.print(f"error: {str(err).strip(chr(34) + chr(39))}", markup=False, highlight=False)
            raise typer.Exit(1) from None

    return run


class _Bars(logging.Handler):
    """``ebr.progress`` reports as rich progress bars, one per task name."""

    LABELS = {"train": "training epochs", "embed": "embedding items", "tune": "tuning settings",
              "slot": "slot"}  # fmt: skip

    def __init__(self, progress: Progress) -> None:
        super().__init__(logging.INFO)
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}
        self._started: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        step = getattr(record, "progress", None)
        if not isinstance(step, dict):
            return
        name = str(step["task"])
        if name in self._tasks and self._progress.tasks[self._index(self._tasks[name])].finished:
            del self._tasks[name]  # a second run of the same work (e.g. the next model) gets a bar
        if not self._progress.live.is_started:  # nothing drawn for work that reports nothing
            self._progress.start()
        if name not in self._tasks:
            label = self.LABELS.get(name, name)
            self._tasks[name] = self._progress.add_task(label, total=step.get("total"), note="")
            self._started[name] = time.perf_counter()
        task = self._tasks[name]
        self._progress.update(
            task, advance=step.get("advance") or 0, total=step.get("total"), note=self._note(step)
        )
        if name == "embed":  # items per second since the first batch
            done = self._progress.tasks[self._index(task)].completed
            rate = done / max(time.perf_counter() - self._started[name], 1e-9)
            self._progress.update(task, note=f"{done:,.0f} items, {rate:,.0f}/s")

    def _index(self, task: TaskID) -> int:
        return [t.id for t in self._progress.tasks].index(task)

    @staticmethod
    def _note(step: Mapping[str, Any]) -> str:
        extra = {k: v for k, v in step.items() if k not in ("task", "advance", "total")}
        if "stage" in extra:
            return str(extra["stage"])
        return "  ".join(f"{k} {_cell(v)}" for k, v in extra.items())


@contextmanager
def progress() -> Iterator[None]:
    """Show ``ebr.progress`` reports as progress bars on stderr while the block runs (the
    result itself still goes to stdout, so ``--json`` output stays machine-readable)."""
    bars = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=ERR,
    )
    handler = _Bars(bars)
    level, propagate = LOGGER.level, LOGGER.propagate
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False  # shown as bars, not also as log lines
    try:
        yield
    finally:
        if bars.live.is_started:
            bars.stop()
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(level)
        LOGGER.propagate = propagate
