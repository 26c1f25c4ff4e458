"""Flyte workflows for the whole EBR data path.

    pyflyte run workflows/platform.py build_platform --workspace var/demo --size 5000
    pyflyte run workflows/platform.py reembed --workspace var/demo --version v1

``build_platform``: marketplace data -> two-tower training -> Beam embedding -> Feast tables
-> index slot, plus an evaluation report (a Flyte Deck) beside the release. ``reembed``
(scheduled nightly, see launch_plans.py) re-runs the last three with an existing model
version, as fresh jobs arrive.
"""

from __future__ import annotations

from flytekit import workflow

from tasks.platform import (
    build_index_slot,
    embed_catalog,
    evaluate_model,
    generate_marketplace,
    publish_features,
    train_two_tower,
)


@workflow
def reembed(
    workspace: str = "var/demo",
    version: str = "v1",
    model_dir: str = "",
    batch_size: int = 256,
    index_kind: str = "ivfpq",
    nprobe: int = 16,
) -> str:
    """Embed the catalog with models/<version>, publish to Feast, build and promote a slot."""
    emb = embed_catalog(
        workspace=workspace, model_dir=model_dir, version=version, batch_size=batch_size
    )
    repo = publish_features(workspace=workspace, embeddings_dir=emb, version=version)
    slot = build_index_slot(
        workspace=workspace,
        embeddings_dir=emb,
        version=version,
        index_kind=index_kind,
        nprobe=nprobe,
    )
    repo >> slot  # the slot goes live only after the tables it serves beside are published
    return slot


@workflow
def build_platform(
    workspace: str = "var/demo",
    size: int = 5000,
    seed: int = 7,
    version: str = "v1",
    epochs: int = 6,
    batch_size: int = 256,
    index_kind: str = "ivfpq",
    nprobe: int = 16,
) -> str:
    """The full data path at ``size`` jobs; returns the name of the slot now serving."""
    data = generate_marketplace(workspace=workspace, size=size, seed=seed)
    model = train_two_tower(workspace=workspace, data_dir=data, version=version, epochs=epochs)
    evaluate_model(workspace=workspace, model_dir=model, version=version)
    return reembed(
        workspace=workspace,
        version=version,
        model_dir=model,
        batch_size=batch_size,
        index_kind=index_kind,
        nprobe=nprobe,
    )
