"""Flyte tasks over ``ebr.release``: record a gated release, change what serves.

Each is a thin call into ``ebr.release.provision`` (the same functions the CLI
``ebr release`` and the serving admin routes call) and returns its result as JSON.
"""

from __future__ import annotations

import json

from flytekit import Resources, task

from ebr.config import GateConfig, ModelConfig, TrainConfig, Workspace


@task(requests=Resources(cpu="2", mem="4Gi"))
def model_for_release(
    workspace: Workspace,
    version: str,
    train_model: bool,
    interest_version: str,
    model: ModelConfig,
    train: TrainConfig,
) -> str:
    """models/<version>: trained now on the workspace's data (co-trained with member-interest
    ``interest_version``) when ``train_model``, else the existing one; returns its folder."""
    from ebr.steps import train_two_tower
    from ebr.versions import interest_paths, read_meta, version_paths

    folder = version_paths(workspace, version).model
    if not train_model:
        read_meta(folder)  # FileNotFoundError naming the folder when the model is not there
        return str(folder)
    interest = interest_paths(workspace, interest_version).model
    read_meta(interest)
    path, metrics = train_two_tower(workspace, version, interest, model, train)
    print(metrics)
    return str(path)


@task(requests=Resources(cpu="1", mem="2Gi"))
def record_release(
    workspace: Workspace, version: str, slot: str, gates: GateConfig, mode: str, ranker: str
) -> str:
    """Gate ``slot`` of ``version`` and record it as a candidate release ("candidate"), also
    make it live ("promote"), or do nothing ("none"); returns the release id ("" for none).
    ``ranker``: a ranker id of ``version``, "live" (the live release's ranking when it serves
    ``version``: a re-embedded slot keeps its ranker and caps) or "" (retrieval order).
    A refused release fails the task with the gates' verdicts."""
    from ebr.release.provision import promote, provision
    from ebr.release.ranking import RankingSpec, live_ranking

    if mode == "none":
        return ""
    ranking = live_ranking(workspace, version) if ranker == "live" else RankingSpec(ranker or None)
    release = provision(workspace, version, slot, gates, ranking)
    print(json.dumps({"release": release.id, "gates": release.record()["gates"]}, indent=2))
    if mode == "promote":
        print(promote(workspace, release.id))
    return release.id


@task(requests=Resources(cpu="1", mem="1Gi"))
def promote_release(workspace: Workspace, release: str) -> str:
    """Make ``release`` live; returns the change (JSON)."""
    from ebr.release.provision import promote

    return json.dumps(promote(workspace, release))


@task(requests=Resources(cpu="1", mem="1Gi"))
def rollback_release(workspace: Workspace, to: str) -> str:
    """Make the previous live release (or ``to``, when not "") live again; returns the change."""
    from ebr.release.provision import rollback

    return json.dumps(rollback(workspace, to or None))


@task(requests=Resources(cpu="1", mem="1Gi"))
def start_experiment(workspace: Workspace, name: str, arms: list[str], salt: str) -> str:
    """Split traffic between releases: ``arms`` like ``control=rel-v1-...:0.5``; ``salt`` ""
    -> the name. Returns the change."""
    from ebr.release.provision import parse_arm
    from ebr.release.provision import start_experiment as start

    specs = [parse_arm(a) for a in arms]
    return json.dumps(start(workspace, name, specs, salt or None))


@task(requests=Resources(cpu="1", mem="1Gi"))
def stop_experiment(workspace: Workspace) -> str:
    """End the running experiment; returns the change."""
    from ebr.release.state import stop_experiment as stop

    return json.dumps(stop(workspace))


@task(requests=Resources(cpu="1", mem="1Gi"))
def retire_release(workspace: Workspace, release: str, keep_slot: bool) -> str:
    """Retire ``release`` (neither live nor an arm): it never serves again; its slot is removed
    unless ``keep_slot`` or something still names it. Returns the change (JSON)."""
    from ebr.release.provision import retire

    return json.dumps(retire(workspace, release, delete_slot=not keep_slot))
