"""``ebr generate | train | embed`` and ``ebr slot build | tune | compact``: the build's steps
one at a time (the ``build_platform`` Flyte workflow runs them all, in this order), with
progress: epochs with their loss, items embedded per second, a slot's build and tuning.

    ebr generate --workspace var/w --jobs 5000
    ebr train --workspace var/w --version v1 --epochs 6
    ebr embed --workspace var/w --version v1
    ebr slot build --workspace var/w --version v1
    ebr release provision --workspace var/w --version v1 && ebr release promote ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.output import emit, operator_errors, progress
from ebr.config import INDEX_KINDS, DataConfig, IndexConfig, ModelConfig, TrainConfig, Workspace
from ebr.config import check_version as _check_version

slot_app = typer.Typer(no_args_is_help=True, help="Index slots: build, tune, compact.")
WorkspaceOpt = Annotated[Path, typer.Option(exists=True, file_okay=False, help="workspace root")]
NewWorkspaceOpt = Annotated[Path, typer.Option(file_okay=False, help="workspace root")]


def check_version(value: str) -> str:
    try:
        return _check_version(value)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


VersionOpt = Annotated[
    str, typer.Option(callback=check_version, help="embedding model version, e.g. v1")
]


def generate(
    workspace: NewWorkspaceOpt,
    jobs: Annotated[int, typer.Option(min=50, help="jobs in the marketplace")] = 5_000,
    seed: Annotated[int, typer.Option(min=0, help="generator seed")] = 7,
) -> None:
    """Write a synthetic marketplace (jobs, members, impression log) to WORKSPACE/data."""
    from ebr.data.marketplace import write_marketplace

    with progress():
        emit(write_marketplace(DataConfig(n_jobs=jobs, seed=seed), Workspace(workspace).data))


def train(
    workspace: WorkspaceOpt,
    version: VersionOpt = "v1",
    interest_version: Annotated[
        str, typer.Option(callback=check_version, help="member-interest model version")
    ] = "v1",
    epochs: Annotated[int, typer.Option(min=1, max=1000, help="epochs per model")] = 6,
    text_encoder: Annotated[
        str, typer.Option(help="'hashed' or 'hashed+minilm' (frozen MiniLM vectors too)")
    ] = ModelConfig.text_encoder,
    retrain_interest: Annotated[
        bool, typer.Option(help="train the member-interest model even when it exists")
    ] = False,
) -> None:
    """Train the member-interest model (unless it exists), then the two-tower model VERSION
    co-trained with it."""
    from ebr.steps import train_member_interest, train_two_tower
    from ebr.versions import interest_paths

    ws, tcfg = Workspace(workspace), TrainConfig(epochs=epochs)
    try:
        mcfg = ModelConfig(text_encoder=text_encoder)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--text-encoder") from None
    interest_dir = interest_paths(ws, interest_version).model
    with progress():
        if retrain_interest or not interest_dir.is_dir():
            interest_dir = train_member_interest(ws, interest_version, tcfg)
        path, metrics = train_two_tower(ws, version, interest_dir, mcfg, tcfg)
    shown = {k: v for k, v in metrics.items() if not isinstance(v, dict | list)}
    emit({"model": str(path), "interest_model": str(interest_dir), **shown})


def embed(
    workspace: WorkspaceOpt,
    version: VersionOpt = "v1",
    batch_size: Annotated[int, typer.Option(min=1, max=65_536, help="rows per pass")] = 256,
    history_holdout_days: Annotated[
        int, typer.Option(min=0, help="interest history ends this many days before the log")
    ] = 2,
    publish: Annotated[bool, typer.Option(help="feast apply + materialize after")] = True,
) -> None:
    """Beam batch inference: member-interest embeddings, then every job and member with
    VERSION; then the version's Feast tables (apply + materialize)."""
    from pipelines.batch.embed import embed_catalog, embed_interest_of

    ws = Workspace(workspace)
    out: dict[str, Any] = {}
    with progress():
        interest = embed_interest_of(ws, version, batch_size, history_holdout_days)
        if interest is not None:
            out["interest"] = {k: interest[k] for k in ("members", "seconds", "path")}
        out["catalog"] = embed_catalog(ws, version, batch_size)
    if publish:
        from feature_repo.store import publish as publish_tables

        published = publish_tables(ws.root, version)
        out["features"] = {k: published[k] for k in ("versions_served", "feature_views",
                                                     "refused", "total_s")}  # fmt: skip
    emit(out)


@slot_app.command()
@operator_errors
def build(
    workspace: WorkspaceOpt,
    version: VersionOpt = "v1",
    kind: Annotated[str, typer.Option(help=f"index kind: {', '.join(INDEX_KINDS)}")] = "ivfpq",
    target_recall: Annotated[
        float, typer.Option(min=0.5, max=1.0, help="recall@10 the tuner must reach")
    ] = IndexConfig.target_recall,
) -> None:
    """Build a new immutable slot from VERSION's job embeddings, tuned to --target-recall,
    and point jobs@VERSION at it (a release serves it: ebr release provision)."""
    from ebr.release.slots import build_job_slot

    if kind not in INDEX_KINDS:
        raise typer.BadParameter(f"must be one of {', '.join(INDEX_KINDS)}", param_hint="--kind")
    cfg = IndexConfig(kind=kind, target_recall=target_recall)
    with progress():
        emit(build_job_slot(Workspace(workspace), version, cfg))


@slot_app.command()
@operator_errors
def tune(
    slot: Annotated[Path, typer.Option(exists=True, file_okay=False, help="slot directory")],
    target_recall: Annotated[
        float, typer.Option(min=0.5, max=1.0, help="recall@10 to reach")
    ] = IndexConfig.target_recall,
    queries: Annotated[int, typer.Option(min=10, help="held-out rows as queries")] = 500,
    full: Annotated[bool, typer.Option(help="measure every setting")] = False,
) -> None:
    """Re-tune SLOT's index in memory and show the sweep (read-only: the slot is unchanged)."""
    from ebr.index.build.tune import RecallGateError
    from ebr.index.build.tune import tune as sweep
    from ebr.index.query.slot import load_slot

    loaded = load_slot(slot)
    try:
        with progress():
            tuned = sweep(loaded.index, loaded.vectors, IndexConfig(target_recall=target_recall),
                          queries, full_sweep=full)  # fmt: skip
    except RecallGateError as err:
        emit(_sweep_rows(err.sweep, None), title=loaded.name)
        raise ValueError(str(err)) from None
    emit(_sweep_rows(tuned["sweep"], tuned["chosen"]), title=f"{loaded.name}: chosen "
         f"{tuned['chosen']} at recall@10 {tuned['recall_at_10']:.4f} (99% lower bound "
         f"{tuned['recall_lower_at_10']:.4f}, {tuned['source']})")  # fmt: skip


def _sweep_rows(sweep: Any, chosen: Any) -> list[dict[str, Any]]:
    return [{"params": " ".join(f"{k}={v}" for k, v in e["params"].items()) or "(exact)",
             "recall@10": round(e["recall"], 4), "lower": round(e["recall_lower"], 4),
             "ms": round(e["seconds"] * 1e3, 2),
             "chosen": "<-" if e["params"] == chosen else ""} for e in sweep]  # fmt: skip


@slot_app.command()
@operator_errors
def compact(
    workspace: WorkspaceOpt,
    release: Annotated[str | None, typer.Option(help="one release (default: live + arms)")] = None,
    min_records: Annotated[int, typer.Option(min=1, help="compact logs with >= this many")] = 1,
) -> None:
    """Fold serving slots' live logs into new snapshots, gated as releases that replace them."""
    from ebr.release.compaction import compact_release, compact_serving

    ws = Workspace(workspace)
    with progress():
        if release:
            emit([compact_release(ws, release, min_records=min_records)])
        else:
            emit(compact_serving(ws, min_records=min_records))
