"""Flyte workflows for the whole EBR data path.

    pyflyte run workflows/platform.py build_platform --workspace var/demo --size 5000
    pyflyte run workflows/platform.py reembed --workspace var/demo      # the live version

``build_platform``: marketplace data -> member-interest model -> composite multi-task
two-tower (co-trained with that interest version, lineage in its model.json) -> ``reembed``,
plus an evaluation report (a Flyte Deck) beside the release. ``reembed`` (scheduled nightly,
see launch_plans.py) refreshes the batch member-interest embeddings with the interest version
the model names, then Beam-embeds jobs and members, publishes the Feast tables and builds and
promotes an index slot, as fresh jobs and engagements arrive.
"""

from __future__ import annotations

from flytekit import workflow

from tasks.platform import (
    build_index_slot,
    embed_catalog,
    embed_member_interest,
    evaluate_model,
    generate_marketplace,
    publish_features,
    serving_version,
    train_member_interest,
    train_two_tower,
)


@workflow
def reembed(
    workspace: str = "var/demo",
    version: str = "",
    batch_size: int = 256,
    index_kind: str = "ivfpq",
    nprobe: int = 16,
    history_holdout_days: int = 2,
    live: str = "refresh",
) -> str:
    """Embed the catalog with models/<version>, publish to Feast, build a slot.

    ``version`` "" re-embeds whatever version jobs@live serves when the run starts.
    ``live``: "refresh" moves jobs@live to the new slot only while live still serves this
    version (a scheduled run never moves live to another version); "promote" always (an
    explicit release); "keep" never. ``history_holdout_days``: the member-interest history
    stops this many days before the log's end (the demo's evaluation days; 0 in production,
    where the log ends now).
    """
    version = serving_version(workspace=workspace, version=version)
    interest = embed_member_interest(
        workspace=workspace,
        version=version,
        batch_size=batch_size,
        history_holdout_days=history_holdout_days,
    )
    emb = embed_catalog(workspace=workspace, version=version, batch_size=batch_size)
    repo = publish_features(workspace=workspace, version=version)
    slot = build_index_slot(
        workspace=workspace, version=version, index_kind=index_kind, nprobe=nprobe, live=live
    )
    # Each step reads what the one before wrote into the workspace (no task takes an input
    # only to be ordered): interest embeddings -> catalogue embeddings (members joined with
    # them) -> Feast tables -> the slot, which goes live only after the tables beside it.
    interest >> emb
    emb >> repo
    repo >> slot
    return slot


@workflow
def build_platform(
    workspace: str = "var/demo",
    size: int = 5000,
    seed: int = 7,
    version: str = "v1",
    interest_version: str = "v1",
    epochs: int = 6,
    text_encoder: str = "hashed",
    batch_size: int = 256,
    index_kind: str = "ivfpq",
    nprobe: int = 16,
) -> str:
    """The full data path at ``size`` jobs; returns the name of the slot now serving."""
    data = generate_marketplace(workspace=workspace, size=size, seed=seed)
    interest = train_member_interest(
        workspace=workspace, data_dir=data, interest_version=interest_version, epochs=epochs
    )
    model = train_two_tower(
        workspace=workspace,
        data_dir=data,
        version=version,
        epochs=epochs,
        interest_dir=interest,
        text_encoder=text_encoder,
    )
    slot = reembed(
        workspace=workspace,
        version=version,
        batch_size=batch_size,
        index_kind=index_kind,
        nprobe=nprobe,
        live="promote",  # building a version on demand is the operator's release of it
    )
    model >> slot  # re-embedding reads models/<version>, which training wrote
    evaluate_model(workspace=workspace, model_dir=model, version=version, slot=slot)
    return slot
