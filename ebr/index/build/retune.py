"""Re-tune a written slot in memory and print the sweep (read-only: the slot's files stay as
they are)::

    python -m ebr.index.build.retune --slot var/demo/slots/<slot> [--target-recall 0.95] [--full]

A command line over ``ebr.index.build.tune`` and ``ebr.index.query.slot``, apart from both so
that neither imports the other back (the writer tunes at write time).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ebr.config import IndexConfig
from ebr.index.build.tune import RecallGateError, tune
from ebr.index.query.params import index_kind, search_params
from ebr.index.query.slot import load_slot


def _print_sweep(sweep: Sequence[Mapping[str, Any]], chosen: Mapping[str, Any] | None) -> None:
    for e in sweep:
        mark = "  <- chosen" if chosen is not None and e["params"] == chosen else ""
        params = " ".join(f"{k}={v}" for k, v in e["params"].items()) or "(exact)"
        print(f"{params:<24} recall@10 {e['recall']:.4f}  {e['seconds'] * 1e3:9.2f} ms{mark}")


def main(
    slot: Path | None = None,
    target_recall: float = IndexConfig.target_recall,
    queries: int = 500,
    threads: int = 2,
    seed: int = IndexConfig.seed,
    full: bool = False,
) -> None:
    """Re-tune the index of the slot at --slot in memory and print the sweep (read-only).

    --full measures every setting instead of skipping those that cannot be the cheapest.
    """
    import typer

    if slot is None:
        raise typer.BadParameter("--slot is required (a slot directory holding manifest.json)")
    loaded = load_slot(slot)
    cfg = IndexConfig(target_recall=target_recall, seed=seed)
    print(f"slot {loaded.name}: {index_kind(loaded.index)}, now {search_params(loaded.index)}")
    try:
        # Only the in-memory index changes; the slot's vectors are memory-mapped read-only.
        tuned = tune(loaded.index, loaded.vectors, cfg, queries, threads=threads, full_sweep=full)
    except RecallGateError as err:
        _print_sweep(err.sweep, None)
        print(err)
        raise typer.Exit(1) from err
    _print_sweep(tuned["sweep"], tuned["chosen"])
    print(
        f"chosen {tuned['chosen']}: recall@10 {tuned['recall_at_10']:.4f} >= "
        f"{tuned['target_recall']} at {len(tuned['sweep'])} settings measured"
    )


if __name__ == "__main__":
    import typer

    typer.run(main)
