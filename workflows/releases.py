"""Flyte workflows for embedding releases: provision a parallel version, change what serves.

    pyflyte run workflows/releases.py provision_release \\
        --config '{"workspace": "var/demo", "version": "v2", "train_model": true}'
    pyflyte run workflows/releases.py promote_release --workspace var/demo --release rel-v2-...
    pyflyte run workflows/releases.py rollback_release --workspace var/demo
    pyflyte run workflows/releases.py start_experiment --workspace var/demo --name v2-vs-v1 \\
        --arms '["control=rel-v1-...:0.5", "treatment=rel-v2-...:0.5"]'
    pyflyte run workflows/releases.py stop_experiment --workspace var/demo
    pyflyte run workflows/releases.py retire_release --workspace var/demo --release rel-v1-...

``provision_release`` (``ebr.config.ReleaseConfig``): model vN (trained now, co-trained with a
member-interest version, or taken as it is) -> batch member-interest and catalogue embeddings
(Beam) -> vN's own Feast views and request FeatureService, beside the served versions' ->
vN's own slot (``jobs@vN``; the live release stays) -> the held-out
evaluation -> the gates -> a candidate release (returns its id). The serving app picks a
candidate up when it is promoted or named by an experiment arm: no redeploy.
"""

from __future__ import annotations

from flytekit import workflow

from ebr.config import ReleaseConfig
from tasks import releases as rt
from tasks.platform import evaluate_model
from workflows.platform import reembed_steps, release_step

PROVISION_DEFAULTS = ReleaseConfig()


@workflow
def provision_release(config: ReleaseConfig = PROVISION_DEFAULTS) -> str:
    """Release ``config.version`` next to what serves; returns the candidate's release id."""
    model = rt.model_for_release(
        workspace=config.workspace,
        version=config.version,
        train_model=config.train_model,
        interest_version=config.interest_version,
        model=config.model,
        train=config.train,
    )
    slot = reembed_steps(config, lambda: config.version, after=model)
    report = evaluate_model(
        workspace=config.workspace, model_dir=model, version=config.version, slot=slot
    )
    return release_step(config, lambda: config.version, slot, config.release, after=report)  # type: ignore[no-any-return]


@workflow
def promote_release(workspace: str, release: str) -> str:
    """Make ``release`` live (serving switches without a redeploy); returns the change."""
    return rt.promote_release(workspace=workspace, release=release)  # type: ignore[no-any-return]


@workflow
def rollback_release(workspace: str, to: str = "") -> str:
    """Make the previous live release (or ``to``) live again; returns the change."""
    return rt.rollback_release(workspace=workspace, to=to)  # type: ignore[no-any-return]


@workflow
def start_experiment(workspace: str, name: str, arms: list[str], salt: str = "") -> str:
    """Split traffic between releases by arm (``control=rel-v1-...:0.5``, ...)."""
    return rt.start_experiment(workspace=workspace, name=name, arms=arms, salt=salt)  # type: ignore[no-any-return]


@workflow
def stop_experiment(workspace: str) -> str:
    """End the running experiment."""
    return rt.stop_experiment(workspace=workspace)  # type: ignore[no-any-return]


@workflow
def retire_release(workspace: str, release: str, keep_slot: bool = False) -> str:
    """Retire a release that no longer serves (its slot goes unless still named)."""
    return rt.retire_release(workspace=workspace, release=release, keep_slot=keep_slot)  # type: ignore[no-any-return]
