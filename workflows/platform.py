"""Flyte workflows for the whole EBR data path; each takes one frozen config (ebr.config).

    pyflyte run workflows/platform.py build_platform --config '{"data": {"n_jobs": 5000}}'
    pyflyte run workflows/platform.py reembed --config '{"workspace": "var/demo"}'  # live version

A config is JSON; fields left out keep their defaults (``BuildConfig``: workspace, version,
interest_version, data, model, train, batch_size, history_holdout_days, index;
``ReembedConfig``: workspace, version, batch_size, history_holdout_days, index, release,
gates), e.g.
``--config '{"index": {"kind": "ivf", "target_recall": 0.97}}'``. A bad value fails before
any task runs, naming the field.

``build_platform``: marketplace data -> member-interest model -> composite multi-task
two-tower (co-trained with that interest version, lineage in its model.json) -> the
re-embedding steps, plus an evaluation report (a Flyte Deck) -> the second-stage ranker
(``rank``; ``ebr.rank.train``) -> a gated release that pins it, made live (``release``:
"promote"). ``reembed`` (scheduled nightly, see launch_plans.py) refreshes the
batch member-interest embeddings with the interest version the model names, then Beam-embeds
jobs and members, publishes the Feast tables and builds an index slot, as fresh jobs and
engagements arrive, and records it as a candidate release of the live release's version: it
never moves the live release (``ebr release promote`` or the ``promote_release``
workflow does). Parallel versions and experiments: ``workflows/releases.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flytekit import workflow

from ebr.config import BuildConfig, ReembedConfig
from tasks.platform import (
    build_index_slot,
    embed_catalog,
    embed_member_interest,
    evaluate_model,
    generate_marketplace,
    publish_features,
    serving_version,
    train_member_interest,
    train_ranker,
    train_two_tower,
)
from tasks.releases import record_release
from tasks.streaming import fold_streamed_changes

# The workflows' defaults (frozen: one shared instance each is safe).
REEMBED_DEFAULTS = ReembedConfig()
BUILD_DEFAULTS = BuildConfig()


def release_step(
    config: Any,
    version: Callable[[], Any],
    slot: Any,
    mode: Any,
    after: Any = None,
    ranker: Any = "live",
) -> Any:
    """Record ``slot`` as a gated release as ``mode`` says (``record_release``), after
    ``after`` (the evaluation, whose figures the record keeps), ranked by ``ranker`` (an id,
    "live": the live release's ranking for its version, "": none)."""
    rid = record_release(
        workspace=config.workspace, version=version(), slot=slot, gates=config.gates, mode=mode,
        ranker=ranker,
    )  # fmt: skip
    if after is not None:
        after >> rid
    return rid


def reembed_steps(config: Any, version: Callable[[], Any], after: Any = None) -> Any:
    """The re-embedding tasks, in order (both workflows compose them). ``config``: the
    workflow's config promise (a ``BuildConfig`` or ``ReembedConfig``: both have workspace,
    batch_size, history_holdout_days and index); ``version()`` gives the version's promise.
    The streamed changes of the last compaction are folded into the catalogue tables first
    (``ebr.stream.catalog.fold_snapshot``). Each use reads an attribute afresh (flytekit
    cannot pass one attribute promise to two tasks). Each step reads what the one before wrote
    into the workspace (no task takes an input only to be ordered): interest embeddings ->
    catalogue embeddings (members joined with them) -> Feast tables -> the slot (served once a
    release records it, after the tables beside it). ``after``: a node the first step waits
    for (what wrote models/<v>)."""
    folded = fold_streamed_changes(workspace=config.workspace)
    interest = embed_member_interest(
        workspace=config.workspace,
        version=version(),
        batch_size=config.batch_size,
        history_holdout_days=config.history_holdout_days,
    )
    folded >> interest
    if after is not None:
        after >> folded
    emb = embed_catalog(workspace=config.workspace, version=version(), batch_size=config.batch_size)
    repo = publish_features(workspace=config.workspace, version=version())
    slot = build_index_slot(workspace=config.workspace, version=version(), index=config.index)
    interest >> emb
    emb >> repo
    repo >> slot
    return slot


@workflow
def reembed(config: ReembedConfig = REEMBED_DEFAULTS) -> str:
    """Embed the catalog with models/<version>, publish to Feast, build a slot and record it as
    a release as ``config.release`` says (see ``ebr.config.ReembedConfig``); returns the new
    slot's name."""
    version = serving_version(workspace=config.workspace, version=config.version)
    slot = reembed_steps(config, lambda: version)
    release_step(config, lambda: version, slot, config.release)
    return slot  # type: ignore[no-any-return]


@workflow
def build_platform(config: BuildConfig = BUILD_DEFAULTS) -> str:
    """The full data path (see ``ebr.config.BuildConfig``); returns the name of the slot now
    serving. Building a version on demand is the operator's release of it: live moves to it."""
    data = generate_marketplace(workspace=config.workspace, data=config.data)
    interest = train_member_interest(
        workspace=config.workspace,
        data_dir=data,
        interest_version=config.interest_version,
        train=config.train,
    )
    model = train_two_tower(
        workspace=config.workspace,
        data_dir=data,
        version=config.version,
        interest_dir=interest,
        model=config.model,
        train=config.train,
    )
    # Re-embedding reads models/<version>, which training wrote.
    slot = reembed_steps(config, lambda: config.version, after=model)
    report = evaluate_model(
        workspace=config.workspace, model_dir=model, version=config.version, slot=slot
    )
    ranker = train_ranker(workspace=config.workspace, version=config.version, slot=slot,
                          ranker=config.ranker, enabled=config.rank)  # fmt: skip
    report >> ranker
    release_step(config, lambda: config.version, slot, config.release, after=ranker,
                 ranker=ranker)  # fmt: skip
    return slot  # type: ignore[no-any-return]
