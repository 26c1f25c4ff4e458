"""``ebr release`` and ``ebr experiment``: operate releases (what the Flyte tasks and the
admin API call, ``ebr.release``).

    ebr release list --workspace var/demo
    ebr release show --workspace var/demo rel-v2-20261130T101500123456
    ebr release provision --workspace var/demo --version v2 --min-coverage 0.99
    ebr release provision --workspace var/demo --version v2 --ranker latest --max-per-company 3
    ebr release promote --workspace var/demo rel-v2-20261130T101500123456
    ebr release rollback --workspace var/demo
    ebr release retire --workspace var/demo rel-v1-...
    ebr experiment start --workspace var/demo v2-vs-v1 control=rel-v1-...:0.5 \\
        treatment=rel-v2-...:0.5
    ebr experiment stop --workspace var/demo
    ebr experiment report --workspace var/demo

A command that cannot be carried out (a refused gate, an unknown release, an unreadable
state.json, aliases.json or record) prints ``error: <why, naming the file>`` and exits 1;
it changed nothing (``ebr.release.provision``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.output import emit, operator_errors
from ebr.config import GateConfig, Workspace
from ebr.release import provision as ops
from ebr.release import state as st
from ebr.release.ranking import RankingSpec
from ebr.release.record import list_releases, read_record

release_app = typer.Typer(no_args_is_help=True, help="Releases: provision, promote, retire.")
experiment_app = typer.Typer(no_args_is_help=True, help="A/B experiments between releases.")
WorkspaceOpt = Annotated[
    Path, typer.Option(exists=True, file_okay=False, help="workspace root (holds releases/)")
]


@release_app.command("list")
@operator_errors
def list_cmd(workspace: WorkspaceOpt) -> None:
    """Every release: its role (live, arm, standby, candidate, retired), version, slot."""
    ws = Workspace(workspace)
    state = st.read_state(ws)
    rows = []
    for rid in list_releases(ws):
        if rid not in state["releases"]:
            continue  # a record whose state entry was never written (a failed provision)
        doc = read_record(ws, rid)
        rows.append({
            "release": rid, "role": st.role(state, rid), "version": doc["model"]["version"],
            "slot": doc["slot"]["name"], "ranker": _ranker_id(doc),
            "created_at": doc["created_at"],
        })  # fmt: skip
    emit(rows, title=f"releases in {ws.root} (live: {state['live']})")


def _ranker_id(doc: dict[str, Any]) -> str | None:
    """The id of the ranker a release record pins (None: retrieval order)."""
    ranker = (doc.get("ranking") or {}).get("ranker")
    return ranker.get("id") if isinstance(ranker, dict) else ranker


@release_app.command()
@operator_errors
def show(
    workspace: WorkspaceOpt,
    release: Annotated[str | None, typer.Argument(help="default: what serves")] = None,
) -> None:
    """RELEASE's record; without one, the live release, the experiment and every role."""
    ws = Workspace(workspace)
    state = st.read_state(ws)
    if release is not None:
        emit({**read_record(ws, release), "role": st.role(state, release)})
        return
    roles = {rid: st.role(state, rid) for rid in list_releases(ws) if rid in state["releases"]}
    emit({"live": state["live"], "experiment": state["experiment"], "releases": roles})


@release_app.command("provision")
@operator_errors
def provision_cmd(
    workspace: WorkspaceOpt,
    version: Annotated[str, typer.Option(help="model version, e.g. v2")],
    slot: Annotated[str | None, typer.Option(help="slot name (default: jobs@<version>)")] = None,
    min_coverage: Annotated[
        float, typer.Option(min=0, max=1, help="share of active jobs required")
    ] = 1.0,
    min_recall: Annotated[
        float, typer.Option(min=0, max=1, help="tuned recall@10 floor (0: slot's)")
    ] = 0.0,
    quality_margin: Annotated[float | None, typer.Option(help="max recall@100 drop")] = None,
    ranker: Annotated[
        str | None, typer.Option(help="'latest' or a ranker id of VERSION (default: none)")
    ] = None,
    depth: Annotated[int, typer.Option(min=1, help="candidates retrieved per request")] = 200,
    max_per_company: Annotated[int | None, typer.Option(min=1, help="default crowding cap")] = None,
    max_per_city: Annotated[int | None, typer.Option(min=1, help="default crowding cap")] = None,
    min_ranker_ratio: Annotated[
        float, typer.Option(min=0, help="ranker NDCG@10 floor, x the retrieval order's")
    ] = 1.0,
) -> None:
    """Gate and record a release of VERSION as a candidate."""
    gates = GateConfig(min_coverage, min_recall, quality_margin, min_ranker_ratio)
    ranking = RankingSpec(ranker, depth, max_per_company, max_per_city)
    release = ops.provision(Workspace(workspace), version, slot, gates, ranking)
    emit({"release": release.id, "gates": release.record()["gates"]})


@release_app.command()
@operator_errors
def promote(workspace: WorkspaceOpt, release: str) -> None:
    """Make RELEASE live."""
    emit(ops.promote(Workspace(workspace), release))


@release_app.command()
@operator_errors
def rollback(
    workspace: WorkspaceOpt, to: Annotated[str | None, typer.Option(help="release id")] = None
) -> None:
    """Make the previous live release (or --to) live again."""
    emit(ops.rollback(Workspace(workspace), to))


@release_app.command()
@operator_errors
def retire(
    workspace: WorkspaceOpt,
    release: str,
    keep_slot: Annotated[bool, typer.Option(help="keep the slot files")] = False,
) -> None:
    """Retire RELEASE (not live, not an arm); its slot goes unless still named."""
    emit(ops.retire(Workspace(workspace), release, delete_slot=not keep_slot))


@experiment_app.command()
@operator_errors
def start(
    workspace: WorkspaceOpt,
    name: str,
    arms: Annotated[list[str], typer.Argument(help="arm=release:weight, two or more")],
    salt: Annotated[str | None, typer.Option(help="assignment salt (default: name)")] = None,
) -> None:
    """Split traffic between releases by arm."""
    try:
        specs = [ops.parse_arm(spec) for spec in arms]
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="ARMS") from None
    emit(ops.start_experiment(Workspace(workspace), name, specs, salt))


@experiment_app.command()
@operator_errors
def stop(workspace: WorkspaceOpt) -> None:
    """End the running experiment."""
    emit(st.stop_experiment(Workspace(workspace)))


@experiment_app.command()
@operator_errors
def report(
    workspace: WorkspaceOpt,
    experiment: Annotated[str | None, typer.Option(help="default: the latest")] = None,
    control: Annotated[str | None, typer.Option(help="control arm (default: the first)")] = None,
    kind: Annotated[str | None, typer.Option(help="search or recommendations only")] = None,
    out: Annotated[Path | None, typer.Option(help="JSON path (PNG beside it)")] = None,
) -> None:
    """The A/B readout from the impression log, replayed on the marketplace's preference
    model: apply rate per arm and lift with a member-bootstrap 95% interval."""
    from ebr.release.ab_report import write_readout

    readout = write_readout(Workspace(workspace), experiment, control, kind, out)
    emit(readout)
