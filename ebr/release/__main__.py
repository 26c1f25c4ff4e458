"""Operate releases from the command line (what the Flyte tasks and the admin API call).

    python -m ebr.release show --workspace var/demo
    python -m ebr.release provision --workspace var/demo --version v2 --min-coverage 0.99
    python -m ebr.release provision --workspace var/demo --version v2 --ranker latest \\
        --max-per-company 3                      # the same retrieval, ranked and crowded
    python -m ebr.release promote --workspace var/demo rel-v2-20261130T101500123456
    python -m ebr.release rollback --workspace var/demo
    python -m ebr.release start-experiment --workspace var/demo v2-vs-v1 \\
        control=rel-v1-...:0.5 treatment=rel-v2-...:0.5
    python -m ebr.release stop-experiment --workspace var/demo
    python -m ebr.release retire --workspace var/demo rel-v1-...
    python -m ebr.release compact --workspace var/demo [--release rel-v1-...]

A command that cannot be carried out (a refused gate, an unknown release, an unreadable
state.json, aliases.json or record) prints ``error: <why, naming the file>`` and exits 1;
it changed nothing (``ebr.release.provision``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from ebr.config import GateConfig, Workspace
from ebr.release import provision as ops
from ebr.release import state as st
from ebr.release.ranking import RankingSpec
from ebr.release.record import list_releases

cli = typer.Typer(add_completion=False, help="Embedding releases: provision, promote, A/B, retire.")
WorkspaceOpt = Annotated[Path, typer.Option(help="workspace root (holds releases/)")]


P = ParamSpec("P")
R = TypeVar("R")


def _echo(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _operator_errors(command: Callable[P, R]) -> Callable[P, R]:
    """An operator's mistake or a bad file ends the command with one line naming it, not a
    traceback (exit code 1)."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (ValueError, KeyError, OSError) as err:  # ReleaseRefused is a ValueError
            typer.echo(f"error: {str(err).strip(chr(34) + chr(39))}", err=True)
            raise typer.Exit(1) from None

    return run


@cli.command()
@_operator_errors
def show(workspace: WorkspaceOpt) -> None:
    """Live release, experiment and every release's state and role."""
    ws = Workspace(workspace)
    state = st.read_state(ws)
    roles = {rid: st.role(state, rid) for rid in list_releases(ws) if rid in state["releases"]}
    _echo({"live": state["live"], "experiment": state["experiment"], "releases": roles})


@cli.command("provision")
@_operator_errors
def provision_cmd(
    workspace: WorkspaceOpt,
    version: Annotated[str, typer.Option(help="model version, e.g. v2")],
    slot: Annotated[str | None, typer.Option(help="slot name (default: jobs@<version>)")] = None,
    min_coverage: Annotated[float, typer.Option(help="share of active jobs required")] = 1.0,
    min_recall: Annotated[float, typer.Option(help="tuned recall@10 floor (0: slot's)")] = 0.0,
    quality_margin: Annotated[float | None, typer.Option(help="max recall@100 drop")] = None,
    ranker: Annotated[
        str | None, typer.Option(help="'latest' or a ranker id of VERSION (default: none)")
    ] = None,
    depth: Annotated[int, typer.Option(help="candidates retrieved per request")] = 200,
    max_per_company: Annotated[int | None, typer.Option(help="default crowding cap")] = None,
    max_per_city: Annotated[int | None, typer.Option(help="default crowding cap")] = None,
    min_ranker_ratio: Annotated[
        float, typer.Option(help="ranker NDCG@10 floor, x the retrieval order's")
    ] = 1.0,
) -> None:
    """Gate and record a release of VERSION as a candidate."""
    gates = GateConfig(min_coverage, min_recall, quality_margin, min_ranker_ratio)
    ranking = RankingSpec(ranker, depth, max_per_company, max_per_city)
    release = ops.provision(Workspace(workspace), version, slot, gates, ranking)
    _echo({"release": release.id, "gates": release.record()["gates"]})


@cli.command()
@_operator_errors
def promote(workspace: WorkspaceOpt, release: str) -> None:
    """Make RELEASE live."""
    _echo(ops.promote(Workspace(workspace), release))


@cli.command()
@_operator_errors
def rollback(
    workspace: WorkspaceOpt, to: Annotated[str | None, typer.Option(help="release id")] = None
) -> None:
    """Make the previous live release (or --to) live again."""
    _echo(ops.rollback(Workspace(workspace), to))


@cli.command("start-experiment")
@_operator_errors
def start_experiment(
    workspace: WorkspaceOpt,
    name: str,
    arms: Annotated[list[str], typer.Argument(help="arm=release:weight, two or more")],
    salt: Annotated[str | None, typer.Option(help="assignment salt (default: name)")] = None,
) -> None:
    """Split traffic between releases by arm."""
    specs = [ops.parse_arm(spec) for spec in arms]
    _echo(ops.start_experiment(Workspace(workspace), name, specs, salt))


@cli.command("stop-experiment")
@_operator_errors
def stop_experiment(workspace: WorkspaceOpt) -> None:
    """End the running experiment."""
    _echo(st.stop_experiment(Workspace(workspace)))


@cli.command()
@_operator_errors
def retire(
    workspace: WorkspaceOpt,
    release: str,
    keep_slot: Annotated[bool, typer.Option(help="keep the slot files")] = False,
) -> None:
    """Retire RELEASE (not live, not an arm); its slot goes unless still named."""
    _echo(ops.retire(Workspace(workspace), release, delete_slot=not keep_slot))


@cli.command()
@_operator_errors
def compact(
    workspace: WorkspaceOpt,
    release: Annotated[str | None, typer.Option(help="one release (default: live + arms)")] = None,
    min_records: Annotated[int, typer.Option(help="compact logs with at least this many")] = 1,
) -> None:
    """Fold serving slots' logs into new snapshots, gated as releases that replace them."""
    from ebr.release.compaction import compact_release, compact_serving

    ws = Workspace(workspace)
    if release:
        _echo([compact_release(ws, release, min_records=min_records)])
    else:
        _echo(compact_serving(ws, min_records=min_records))


if __name__ == "__main__":
    cli()
