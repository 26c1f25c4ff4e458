"""The workspace Feast repo: its files and the in-process `feast apply`.

A workspace repo (``<workspace>/feature_repo/``) holds the template's definitions, copied
verbatim, and ``versions.json``, the declarative list of the model versions it serves, which
``definitions.py`` reads at import to declare each version's views::

    {"versions": [{"interest_version": "v1", "version": "v1"},
                  {"interest_version": null, "version": "v2"}]}

``interest_version`` is the member-interest version the model was co-trained with (its
model.json lineage; null for none). ``feature_repo.store.publish`` writes both and applies them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import uuid
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ebr import feast_names
from ebr.config import Workspace
from ebr.io import atomic_write_bytes, atomic_write_json
from ebr.versions import FEATURE_VERSIONS_FILE as VERSIONS_FILE
from ebr.versions import (
    META_FILE,
    VERSION_RE,
    feature_versions,
    interest_version,
    model_config,
    read_meta,
    version_paths,
)

if TYPE_CHECKING:
    from feast import FeatureStore

TEMPLATE_DIR = Path(__file__).resolve().parent
# What a workspace repo is made of, copied verbatim; the adapter's modules stay behind.
DEFINITION_FILES = (
    "feature_store.yaml",
    "feature_store.redis.yaml",
    "feature_store.redis_cluster.yaml",
    "definitions.py",
    ".feastignore",
)
# The one place Feast names are built, copied beside definitions.py (which loads it).
NAMES_SOURCE = Path(feast_names.__file__).resolve()
REPO_ROOT = NAMES_SOURCE.parents[1]
NAMES_FILE = "feast_names.py"
_CHANGE_RE = re.compile(r"^(Created|Updated|Deleted|Removed) ")


def model_facts(ws: Workspace, version: str) -> tuple[int | None, str | None, int | None]:
    """(embedding dim, co-trained member-interest version, its dim) from the model.json of
    ``version`` (its lineage); all None for a model whose folder is not in this workspace."""
    model_dir = version_paths(ws, version).model
    if not (model_dir / META_FILE).is_file():
        return None, None, None
    meta = read_meta(model_dir)
    cfg = model_config(meta)
    return cfg.dim, interest_version(meta), cfg.interest_dim or None


def served_versions(ws: Workspace) -> dict[str, str | None]:
    """Model version -> its co-trained interest version, for every version the workspace repo
    serves now (its versions file); {} before the first publish."""
    path = ws.feature_repo / VERSIONS_FILE
    if not path.is_file():
        # A repo published before versions.json existed: the versions data/ holds tables of.
        table = feast_names.embedding_names("job", "{}").table  # data/job_embeddings_{}.parquet
        prefix, suffix = Path(table).name.split("{}")
        names = (p.name for p in (ws.feature_repo / "data").glob(f"{prefix}v*{suffix}"))
        found = (n.removeprefix(prefix).removesuffix(suffix) for n in names)
        return {v: model_facts(ws, v)[1] for v in found if VERSION_RE.match(v)}
    return feature_versions(path)


def write_repo(template: Path, repo: Path, served: dict[str, str | None]) -> None:
    """Copy the template definitions verbatim and list ``served`` in the versions file, so
    `feast apply` there sees every version and the member-interest table each one reads."""
    copy_definitions(template, repo)
    listed = sorted(served.items(), key=lambda kv: int(kv[0][1:]))  # "v2" before "v10"
    entries = [{"version": v, "interest_version": iv} for v, iv in listed]
    atomic_write_json(repo / VERSIONS_FILE, {"versions": entries})


def copy_definitions(template: Path, repo: Path) -> None:
    """The template's definition files and ``feast_names.py``, copied verbatim into ``repo``."""
    sources = {name: template / name for name in DEFINITION_FILES} | {NAMES_FILE: NAMES_SOURCE}
    for name, src in sources.items():
        if not src.is_file():
            raise FileNotFoundError(f"feature_repo template lacks {name}: {src}")
        atomic_write_bytes(repo / name, src.read_bytes())


def load_definitions(path: Path) -> ModuleType:
    # A fresh module per load under a unique name: importing "definitions" the way `feast apply`
    # does would hand a second publish in this process the stale module from sys.modules.
    spec = importlib.util.spec_from_file_location(f"_ebr_feast_defs_{uuid.uuid4().hex}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load Feast definitions from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def apply_definitions(store: FeatureStore, definitions: Path) -> list[str]:
    """Apply ``definitions`` exactly like `feast apply` (stale objects deleted); the changes.

    Feast 0.67 reports every view whose meta timestamps moved as "Updated", even on a no-op.
    """
    from feast import Entity, FeatureService, FeatureView, Project, PushSource
    from feast.data_source import DataSource
    from feast.feature_view import DUMMY_ENTITY
    from feast.repo_contents import RepoContents
    from feast.repo_operations import apply_total_with_repo_instance

    sources: list[Any] = []
    views: list[Any] = []
    entities: list[Any] = []
    services: list[Any] = []

    def add(bucket: list[Any], obj: Any) -> None:
        if not any(obj is seen for seen in bucket):  # identity, as feast's parse_repo does
            bucket.append(obj)

    for name, obj in vars(load_definitions(definitions)).items():
        if isinstance(obj, FeatureView) and type(obj) is FeatureView:
            add(views, obj)
            add(sources, obj.batch_source)
            if obj.stream_source is not None:
                add(sources, obj.stream_source)
        elif isinstance(obj, FeatureView):  # stream/batch feature views: not handled here
            kind = type(obj).__name__
            raise ValueError(f"{definitions}: {name} is a {kind}; extend apply_definitions")
        elif isinstance(obj, DataSource):
            add(sources, obj)
            if isinstance(obj, PushSource) and obj.batch_source is not None:
                add(sources, obj.batch_source)
        elif isinstance(obj, Entity):
            add(entities, obj)
        elif isinstance(obj, FeatureService):
            add(services, obj)
    repo = RepoContents(
        projects=[Project(name=store.project)],
        data_sources=sources,
        feature_views=views,
        on_demand_feature_views=[],
        stream_feature_views=[],
        label_views=[],
        entities=[*entities, DUMMY_ENTITY],
        feature_services=services,
        permissions=[],
    )
    # The CLI routine echoes the full registry diff (protos); keep only its summary lines.
    echoed = io.StringIO()
    with contextlib.redirect_stdout(echoed):
        apply_total_with_repo_instance(
            store, store.project, store.registry, repo, skip_source_validation=False
        )
    return [line for line in echoed.getvalue().splitlines() if _CHANGE_RE.match(line)]
