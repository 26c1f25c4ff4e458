"""``ebr judgments list | report``: the relevance page's judgments (``ebr.eval.judgments``) and
NDCG@10 per release from them, computed in this process on each release's own serving path
(encoder, Feast member features, slot, ranker, crowding), and usable as a release gate:

    ebr judgments report --workspace var/demo --set nurses --release rel-v2-... \\
        --min-ratio 1.0 && ebr release promote --workspace var/demo rel-v2-...

exits 1 when the release's NDCG@10 is below ``--min-ndcg`` or below ``--min-ratio`` x the
live release's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.output import emit, operator_errors
from ebr.config import Workspace
from ebr.eval import judgments as jd

judgments_app = typer.Typer(no_args_is_help=True, help="Relevance judgments and NDCG@10.")
WorkspaceOpt = Annotated[Path, typer.Option(exists=True, file_okay=False, help="workspace root")]


@judgments_app.command("list")
@operator_errors
def list_cmd(workspace: WorkspaceOpt) -> None:
    """The workspace's judgment sets."""
    emit(jd.list_sets(Workspace(workspace)), title="judgment sets")


def release_searches(ws: Workspace, releases: list[str], retrieval: str) -> dict[str, jd.Search]:
    """Per release, its whole serving path in this process: (query, member, k) -> job ids."""
    from serving.loaded_release import Loader
    from serving.page import PageOptions

    loader = Loader(str(ws.root), verify=True, refresh_s=0)
    out: dict[str, jd.Search] = {}
    for rid in releases:
        rel = asyncio.run(loader.load(rid))

        def search(query: str | None, member: int | None, k: int, rel: Any = rel) -> list[int]:
            if query is None:
                assert member is not None, "a judged query has a query or a member"
                hits = rel.recommendations(member, k, PageOptions())
            else:
                hits, _, _ = rel.answer(query, member, k, None, retrieval, PageOptions())
            return [int(h["job_id"]) for h in hits[0]]

        out[rid] = search
    return out


@judgments_app.command()
@operator_errors
def report(
    workspace: WorkspaceOpt,
    set_name: Annotated[str, typer.Option("--set", help="the judgment set")],
    release: Annotated[
        list[str] | None, typer.Option(help="a release to score (repeat; default: serving)")
    ] = None,
    retrieval: Annotated[str, typer.Option(help="ebr, term or hybrid")] = "hybrid",
    min_ndcg: Annotated[float, typer.Option(min=0, max=1, help="gate: NDCG@10 floor")] = 0.0,
    min_ratio: Annotated[float, typer.Option(min=0, help="gate: x the live release's")] = 0.0,
) -> None:
    """NDCG@10 per release on the judged queries of --set (each release's own serving path);
    exits 1 when a --release named fails the gate."""
    from ebr.release import state as st

    if retrieval not in ("ebr", "term", "hybrid"):
        raise typer.BadParameter("must be ebr, term or hybrid", param_hint="--retrieval")
    ws = Workspace(workspace)
    items = jd.read_set(ws, set_name)
    if not items:
        raise ValueError(f"judgment set {set_name!r} has no judgments in {ws.root}")
    state = st.read_state(ws)
    named = list(release or [])
    scored = list(dict.fromkeys(named + st.serving_ids(state)))
    result = jd.report(items, release_searches(ws, scored, retrieval))
    result["set"] = set_name
    faults = []
    for rid in named:
        faults += jd.gate(result, rid, min_ndcg, state["live"], min_ratio)
    result["gate"] = {"passed": not faults, "faults": faults} if named else None
    emit(result)
    if faults:
        raise ValueError("; ".join(faults))
