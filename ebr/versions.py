"""The facts about one model version, each read by one function (no torch: the Feast adapter,
the Beam pipeline, Flyte tasks and serving all call these).

A model version (``v1``, ``v2``, ...) names its artifact folder ``models/<v>`` (with
``model.json``), its embeddings, Feast views and index slots. What a version's ``model.json``
says is read here: its ``ModelConfig`` (``model_config``) and the member-interest version it
was co-trained with (``interest_version``). ``check_lineage`` verifies that
pairing against the interest model's own files. Where each of a version's artifacts lives in
a workspace comes from ``version_paths`` / ``interest_paths`` (nobody joins those paths by
hand).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The version rule lives in ebr.config (the workflow configs check it too); read it here.
from ebr.config import VERSION_RE as VERSION_RE
from ebr.config import ModelConfig, Workspace, check_version
from ebr.feast_names import FeatureNames as FeatureNames
from ebr.feast_names import release_names

META_FILE = "model.json"


@dataclass(frozen=True)
class VersionPaths:
    """Where a two-tower model version's artifacts live in a workspace."""

    version: str
    model: Path  # models/<v>/: towers + model.json
    embeddings: Path  # embeddings/<v>/: the batch embedding run's output folder
    jobs: Path  # embeddings/<v>/jobs.parquet: item-tower embeddings
    members: Path  # embeddings/<v>/members.parquet: request-tower member embeddings
    eval: Path  # eval/<v>/: the held-out evaluation report (eval_report.json + .png)


@dataclass(frozen=True)
class InterestPaths:
    """Where a member-interest model version's artifacts live in a workspace."""

    version: str
    model: Path  # interest/models/<iv>/
    embeddings: Path  # interest/embeddings/<iv>/: the interest run's output folder
    members: Path  # interest/embeddings/<iv>/members.parquet
    jobs: Path  # interest/embeddings/<iv>/jobs.parquet: jobs by the interest model's item tower


def version_paths(ws: Workspace, version: str) -> VersionPaths:
    """The paths of two-tower model ``version`` (checked) in ``ws``."""
    check_version(version)
    out = ws.embeddings / version
    return VersionPaths(
        version,
        ws.models / version,
        out,
        out / "jobs.parquet",
        out / "members.parquet",
        ws.root / "eval" / version,
    )


def interest_paths(ws: Workspace, interest_version: str) -> InterestPaths:
    """The paths of member-interest model ``interest_version`` (checked) in ``ws``."""
    check_version(interest_version)
    out = ws.interest_embeddings / interest_version
    return InterestPaths(
        interest_version,
        ws.interest_models / interest_version,
        out,
        out / "members.parquet",
        out / "jobs.parquet",
    )


def read_meta(path: Path) -> dict[str, Any]:
    """The ``model.json`` of the artifact folder ``path``."""
    meta_path = Path(path) / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"no model artifact at {path} ({META_FILE} missing)")
    meta: dict[str, Any] = json.loads(meta_path.read_text())
    return meta


def model_config(meta: dict[str, Any]) -> ModelConfig:
    """The ``ModelConfig`` a model.json records (the towers rebuild from it identically)."""
    return ModelConfig(**meta["model_config"])


def interest_version(meta: dict[str, Any]) -> str | None:
    """The member-interest version a model.json records as co-trained (``lineage``); None for
    a model without a member-interest input."""
    recorded = meta.get("lineage", {}).get("member_interest")
    if recorded is None:
        return None
    return check_version(str(recorded["version"]))


def eval_days(meta: dict[str, Any]) -> int:
    """The held-out days at the end of the impression log the model was trained without
    (``TrainConfig.eval_days`` as recorded in its model.json): what evaluating it must hold
    out, whatever today's default is."""
    days = meta.get("train", {}).get("eval_days")
    if not isinstance(days, int) or days < 1:
        raise ValueError(
            f"model {meta.get('version')!r} records no train.eval_days (got {days!r}); "
            "it cannot be evaluated on the days it was trained without"
        )
    return days


FEATURE_VERSIONS_FILE = "versions.json"  # feature_repo/versions.json: the versions Feast serves
FEATURE_VERSIONS_FORMAT = '{"versions": [{"version": "v1", "interest_version": "v1" or null}, ...]}'


def feature_versions(path: Path) -> dict[str, str | None]:
    """Model version -> co-trained member-interest version (None: none), for every version a
    Feast repo's versions file ``path`` lists (written by ``feature_repo.repo.write_repo``).

    Raises:
        FileNotFoundError: no such file. ValueError: a malformed file or version.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the Feast repo serves no version")
    try:
        entries = json.loads(path.read_text())["versions"]
        return {
            check_version(e["version"]): (
                None if (iv := e.get("interest_version")) is None else check_version(iv)
            )
            for e in entries
        }
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is malformed ({e}); expected {FEATURE_VERSIONS_FORMAT}") from e


def feature_names(version: str, interest_version: str | None) -> FeatureNames:
    """The Feast feature services and views of model ``version`` co-trained with member-interest
    ``interest_version`` (None: none), both checked (``ebr.feast_names`` builds every name)."""
    check_version(version)
    return release_names(
        version, None if interest_version is None else check_version(interest_version)
    )


class LineageError(ValueError):
    """A model and the member-interest model it names are not the co-trained pair."""


def interest_lineage(interest_dir: Path) -> dict[str, Any]:
    """The ``lineage`` entry a two-tower model records for the interest model it read.

    The interest model's version, its artifact checksums and creation time pin exactly which
    model produced the interest embeddings the request tower was trained on.
    """
    meta = read_meta(interest_dir)
    cfg = model_config(meta)
    if cfg.schema != "interest":
        raise LineageError(
            f"{interest_dir} holds a {cfg.schema!r} model, not a member-interest one"
        )
    return {
        "member_interest": {
            "version": meta["version"],
            "dim": cfg.dim,
            "checksums": meta["checksums"],
            "created_at": meta["created_at"],
        }
    }


def check_lineage(meta: dict[str, Any], interest_dir: Path | None) -> str | None:
    """Verify that ``interest_dir`` is the interest model ``meta`` (a model.json) was co-trained
    with; returns its version (None for a model without a member-interest input).

    Raises LineageError when the model needs an interest model and ``interest_dir`` is missing,
    another version, or a re-trained artifact under the same version (checksums differ).
    """
    cfg = model_config(meta)
    recorded = meta.get("lineage", {}).get("member_interest")
    if not cfg.interest_dim:
        return None
    if recorded is None or interest_version(meta) is None:
        raise LineageError(f"model {meta.get('version')} reads member interest but records none")
    if interest_dir is None or not (interest_dir / "model.json").is_file():
        raise LineageError(
            f"model {meta.get('version')} was co-trained with member-interest "
            f"{recorded['version']}, which is not at {interest_dir}"
        )
    actual = interest_lineage(interest_dir)["member_interest"]
    for key in ("version", "checksums", "dim"):
        if actual[key] != recorded[key]:
            raise LineageError(
                f"model {meta.get('version')} was co-trained with member-interest "
                f"{recorded['version']} ({key}={recorded[key]}), but {interest_dir} has "
                f"{key}={actual[key]}"
            )
    return str(recorded["version"])


def verified_interest(ws: Workspace, meta: dict[str, Any]) -> str | None:
    """The member-interest version ``meta`` (a model.json) was co-trained with, checked
    against that model's files in ``ws`` (``check_lineage``); None for a model without a
    member-interest input."""
    iv = interest_version(meta)
    return check_lineage(meta, None if iv is None else interest_paths(ws, iv).model)
