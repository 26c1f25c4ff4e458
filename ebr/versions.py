"""The facts about one model version, each read by one function (no torch: the Feast adapter,
the Beam pipeline, Flyte tasks and serving all call these).

A model version (``v1``, ``v2``, ...) names its artifact folder ``models/<v>`` (with
``model.json``), its embeddings, Feast views and index slots. What a version's ``model.json``
says is read here: its ``ModelConfig`` (``model_config``) and the member-interest version it
was co-trained with (``interest_version``). ``ebr.model.artifact.check_lineage`` verifies that
pairing against the interest model's own files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ebr.config import ModelConfig

VERSION_RE = re.compile(r"^v[0-9]{1,6}$")
META_FILE = "model.json"


def check_version(version: str) -> str:
    """Embedding versions name Feast tables and slots: 'v1', 'v2', ..."""
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise ValueError(
            f"version must match {VERSION_RE.pattern} (model versions look like 'v1', 'v2', "
            f"...); got {version!r}"
        )
    return version


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
