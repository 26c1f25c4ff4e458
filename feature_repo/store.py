"""The Feast adapter the workflow and serving call: publish embedding tables, read them online.

``publish`` turns ``embeddings/<version>/`` and ``data/members.parquet`` of a workspace into a
Feast repo at ``<workspace>/feature_repo/`` (definitions + parquet ``data/``), applies it and
materializes the new rows into the online store. The read helpers return plain Python / numpy.

``feast`` is imported inside functions only: it costs ~6 s (it pulls in torch and fastapi).

Run the tests: ``pytest -q tests/pipelines/test_feast_store.py``
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from ebr.config import Workspace
from ebr.data.records import Rejected, check_members
from ebr.io import atomic_write_bytes, atomic_write_parquet
from ebr.versions import META_FILE, check_version, interest_version, read_meta

if TYPE_CHECKING:
    from feast import FeatureStore

TEMPLATE_DIR = Path(__file__).resolve().parent
# What a workspace repo is made of; store.py and __init__.py stay behind (not definitions).
DEFINITION_FILES = (
    "feature_store.yaml",
    "feature_store.redis.yaml",
    "definitions.py",
    ".feastignore",
)
CONFIG_NAMES = ("feature_store.yaml", "feature_store.redis.yaml")
# Feast expands ${VAR} but has no default syntax; these apply when the variable is unset.
ENV_DEFAULTS = {"REDIS_CONNECTION_STRING": "127.0.0.1:6379"}
PROFILE_FIELDS = (
    "headline",
    "skills",
    "seniority",
    "city",
    "country",
    "lat",
    "lon",
    "open_to_remote",
    "max_commute_km",
    "preferred_employment_type",
)
REFUSED_EXAMPLES = 5  # refused rows shown in publish's summary (the file lists them all)
_VERSIONS_LINE_RE = re.compile(r"^EMBEDDING_VERSIONS\b[^=\n]*=.*$", re.MULTILINE)
_INTEREST_LINE_RE = re.compile(r"^INTEREST_OF\b[^=\n]*=.*$", re.MULTILINE)
_PUBLISHED_RE = re.compile(r"^job_embeddings_(v[0-9]+)\.parquet$")
_CHANGE_RE = re.compile(r"^(Created|Updated|Deleted|Removed) ")


def _check_version(version: str) -> None:
    check_version(version)


def _check_config_name(config_name: str) -> None:
    if config_name not in CONFIG_NAMES:
        raise ValueError(f"config_name must be one of {CONFIG_NAMES}, got {config_name!r}")


def _read_embeddings(path: Path, key: str, version: str) -> tuple[pd.DataFrame, list[Rejected]]:
    """``key, embedding (float32, one dim), model_version, event_timestamp`` rows, and the rows
    refused: a null id or embedding, a width other than the table's (its most common one),
    non-finite values, an id repeated (every copy: which is right is unknown). A table that is
    wrong as a whole (columns, model_version, no usable row) raises."""
    if not path.is_file():
        raise FileNotFoundError(f"embedding table not found: {path}")
    columns = [key, "embedding", "model_version", "event_timestamp"]
    missing = sorted(set(columns) - set(pq.read_schema(path).names))
    if missing:
        raise ValueError(f"{path} lacks columns {missing}; expected {columns}")
    table = pq.read_table(path, columns=columns)
    if table.num_rows == 0:
        raise ValueError(f"{path} has no rows")
    versions = pc.unique(table.column("model_version")).to_pylist()
    if versions != [version]:
        raise ValueError(f"{path} has model_version {versions}; expected only {version!r}")
    df = table.to_pandas()
    ids = df[key]
    problems: dict[int, tuple[str, str]] = {}  # row -> (field, reason); the first one counts
    for i in np.flatnonzero(ids.isna()):
        problems[int(i)] = (key, "required, got null")
    for i in np.flatnonzero(ids.duplicated(keep=False) & ids.notna()):
        problems[int(i)] = (key, "repeated: every copy refused (which is right is unknown)")
    width = np.array([-1 if e is None else len(e) for e in df["embedding"]])
    dim = int(np.bincount(width[width >= 0]).argmax()) if (width >= 0).any() else -1
    for i in np.flatnonzero(width != dim):
        why = "required, got null" if width[i] < 0 else f"must have {dim} values like the table"
        problems.setdefault(int(i), ("embedding", why))
    sized = np.flatnonzero(width == dim)
    if len(sized):
        finite = np.isfinite(np.stack(df["embedding"].iloc[sized].to_numpy())).all(axis=1)
        for i in sized[~finite]:
            problems.setdefault(int(i), ("embedding", "must be finite, got NaN or inf values"))
    refused = [
        Rejected(i, key, _id(ids.iloc[i]), field, why)
        for i, (field, why) in sorted(problems.items())
    ]
    df = df.drop(index=df.index[sorted({r.row for r in refused})]).reset_index(drop=True)
    if df.empty:
        raise ValueError(f"{path} has no valid rows; first refused: {refused[0]}")
    df[key] = df[key].astype(np.int64)
    # Naive timestamps are read as UTC, which is what Feast assumes for them as well.
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    df["embedding"] = [np.asarray(e, dtype=np.float32) for e in df["embedding"]]
    return df, refused


def _id(value: Any) -> int | None:
    return None if pd.isna(value) else int(value)


def _read_profiles(path: Path, published_at: datetime) -> tuple[pd.DataFrame, list[Rejected]]:
    """Member profiles that hold the record contract, with ``event_timestamp`` = publish time
    (profiles carry none), and the ones refused."""
    if not path.is_file():
        raise FileNotFoundError(f"member profiles not found: {path}")
    columns = ["member_id", *PROFILE_FIELDS]
    missing = sorted(set(columns) - set(pq.read_schema(path).names))
    if missing:
        raise ValueError(f"{path} lacks columns {missing}; expected {columns}")
    return check_profiles(pd.read_parquet(path, columns=columns), published_at)


def check_profiles(df: pd.DataFrame, published_at: datetime) -> tuple[pd.DataFrame, list[Rejected]]:
    """(profiles to publish, one ``Rejected`` per profile refused) by ebr.data.records's
    member contract (a repeated member_id keeps the last row)."""
    good, rejected = check_members(df)
    good = good.reset_index(drop=True)
    good["event_timestamp"] = pd.Timestamp(published_at)
    return good, rejected


def _dead_letters(refused: dict[str, list[Rejected]]) -> list[dict[str, Any]]:
    return [{"table": table, **r.to_json()} for table, rows in refused.items() for r in rows]


def _published_versions(data_dir: Path) -> set[str]:
    if not data_dir.is_dir():
        return set()
    return {m.group(1) for p in data_dir.iterdir() if (m := _PUBLISHED_RE.match(p.name))}


def _interest_of(ws: Workspace, version: str) -> str | None:
    """The member-interest version model ``version`` was co-trained with (its model.json
    lineage); None for a model without one or whose folder is not in this workspace."""
    if not (ws.models / version / META_FILE).is_file():
        return None
    return interest_version(read_meta(ws.models / version))


def _write_definitions(
    template_dir: Path, repo: Path, versions: list[str], interest_of: dict[str, str]
) -> None:
    """Copy the template, pinning EMBEDDING_VERSIONS and INTEREST_OF so `feast apply` there
    sees every version and the member-interest table each one reads."""
    for name in DEFINITION_FILES:
        src = template_dir / name
        if not src.is_file():
            raise FileNotFoundError(f"feature_repo template lacks {name}: {src}")
        text = src.read_text()
        if name == "definitions.py":
            listed = repr(tuple(versions)).replace("'", '"')  # versions are ^v[0-9]+$
            text, n = _VERSIONS_LINE_RE.subn(
                f"EMBEDDING_VERSIONS: tuple[str, ...] = {listed}", text
            )
            if n != 1:
                raise ValueError(f"{src} must assign EMBEDDING_VERSIONS on exactly one line")
            mapping = json.dumps(interest_of, sort_keys=True)  # versions are ^v[0-9]+$
            text, n = _INTEREST_LINE_RE.subn(f"INTEREST_OF: dict[str, str] = {mapping}", text)
            if n != 1:
                raise ValueError(f"{src} must assign INTEREST_OF on exactly one line")
        atomic_write_bytes(repo / name, text.encode())


def _load_definitions(path: Path) -> ModuleType:
    # A fresh module per load under a unique name: importing "definitions" the way `feast apply`
    # does would hand a second publish in this process the stale module from sys.modules.
    spec = importlib.util.spec_from_file_location(f"_ebr_feast_defs_{uuid.uuid4().hex}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load Feast definitions from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _apply(store: FeatureStore, definitions: Path) -> list[str]:
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

    for name, obj in vars(_load_definitions(definitions)).items():
        if isinstance(obj, FeatureView) and type(obj) is FeatureView:
            add(views, obj)
            add(sources, obj.batch_source)
            if obj.stream_source is not None:
                add(sources, obj.stream_source)
        elif isinstance(obj, FeatureView):  # stream/batch feature views: not handled here
            raise ValueError(f"{definitions}: {name} is a {type(obj).__name__}; extend _apply")
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


def publish(
    workspace_root: Path,
    version: str,
    template_dir: Path | None = None,
    config_name: str = "feature_store.yaml",
) -> dict[str, Any]:
    """Publish embeddings of ``version`` and member profiles to Feast, online and offline.

    Writes ``<workspace>/feature_repo/{definitions, data/*.parquet}`` atomically, applies the
    definitions (idempotent; earlier versions stay served) and materializes this version's
    embedding views plus ``member_profile`` over a window covering every event timestamp. A
    model co-trained with a member-interest model (``lineage`` in its model.json) also
    publishes that interest version's batch embeddings as ``member_interest_<iv>``.
    Rows that break the record contract (profiles: ebr.data.records) or hold no usable
    vector (embeddings: null, another width, non-finite, a repeated id) are not published:
    ``refused`` counts them per table, ``refused_examples`` shows the first few and
    ``feature_repo/data/deadletter_<version>.jsonl`` lists them all (one JSON object a line:
    table, row, id, field, reason).
    Returns row counts, the applied feature views and seconds per step.
    """
    _check_version(version)
    _check_config_name(config_name)
    t0 = time.perf_counter()
    ws = Workspace(Path(workspace_root))
    repo, template = ws.feature_repo, Path(template_dir or TEMPLATE_DIR)
    published_at = datetime.now(UTC).replace(microsecond=0)

    refused: dict[str, list[Rejected]] = {}
    jobs, refused["jobs"] = _read_embeddings(
        ws.embeddings / version / "jobs.parquet", "job_id", version
    )
    members, refused["members"] = _read_embeddings(
        ws.embeddings / version / "members.parquet", "member_id", version
    )
    profiles, refused["profiles"] = _read_profiles(ws.data / "members.parquet", published_at)
    iv = _interest_of(ws, version)
    interest = None
    if iv is not None:
        path = ws.interest_embeddings / iv / "members.parquet"
        interest, refused["interest"] = _read_embeddings(path, "member_id", iv)
    # Refused rows are not published; they are listed beside the published data.
    dead = _dead_letters(refused)
    dead_path = repo / "data" / f"deadletter_{version}.jsonl"
    atomic_write_bytes(dead_path, "".join(json.dumps(d) + "\n" for d in dead).encode())
    # Data first: apply validates that every FileSource path exists.
    atomic_write_parquet(repo / "data" / f"job_embeddings_{version}.parquet", jobs)
    atomic_write_parquet(repo / "data" / f"member_embeddings_{version}.parquet", members)
    atomic_write_parquet(repo / "data" / "member_profiles.parquet", profiles)
    if interest is not None:
        atomic_write_parquet(repo / "data" / f"member_interest_{iv}.parquet", interest)
    versions = sorted(_published_versions(repo / "data") | {version}, key=lambda v: int(v[1:]))
    interest_of = {v: i for v in versions if (i := _interest_of(ws, v)) is not None}
    _write_definitions(template, repo, versions, interest_of)
    t_write = time.perf_counter()

    # Applied in-process rather than via a `feast apply` subprocess: this process imports feast
    # anyway to materialize (a subprocess pays the ~6 s import again), failures arrive as
    # exceptions instead of exit codes, and _apply runs the same routine the CLI runs after
    # parsing, without the CLI's os.chdir() and sys.modules import of "definitions".
    store = open_store(repo, config_name)
    changes = _apply(store, repo / "definitions.py")
    t_apply = time.perf_counter()

    tables = [jobs, members] + ([] if interest is None else [interest])
    stamps = pd.concat([t["event_timestamp"] for t in tables])
    start = min(stamps.min(), pd.Timestamp(published_at)).to_pydatetime() - timedelta(seconds=1)
    end = max(stamps.max(), pd.Timestamp(published_at)).to_pydatetime() + timedelta(seconds=1)
    views = [f"job_embedding_{version}", f"member_embedding_{version}", "member_profile"]
    if iv is not None:
        views.append(f"member_interest_{iv}")
    store.materialize(start_date=start, end_date=end, feature_views=views)
    t_end = time.perf_counter()
    return {
        "version": version,
        "repo_path": str(repo),
        "config_name": config_name,
        "versions_served": versions,
        "interest_version": iv,
        "feature_views": sorted(fv.name for fv in store.list_feature_views()),
        "apply_changes": changes,
        "jobs": len(jobs),
        "members": len(members),
        "profiles": len(profiles),
        "refused": {table: len(rows) for table, rows in refused.items()},
        "refused_examples": dead[:REFUSED_EXAMPLES],
        "dead_letter_path": str(dead_path),
        "dim": int(len(jobs["embedding"].iloc[0])),
        "write_s": round(t_write - t0, 3),
        "apply_s": round(t_apply - t_write, 3),
        "materialize_s": round(t_end - t_apply, 3),
        "total_s": round(t_end - t0, 3),
    }


def _expand_env(text: str) -> str:
    # Same expansion as Feast's loader (os.path.expandvars), plus ENV_DEFAULTS for unset ${VAR}.
    def default(m: re.Match[str]) -> str:
        name = m.group(1)
        return ENV_DEFAULTS[name] if name not in os.environ and name in ENV_DEFAULTS else m[0]

    return os.path.expandvars(re.sub(r"\$\{(\w+)\}", default, text))


def open_store(repo_path: Path, config_name: str = "feature_store.yaml") -> FeatureStore:
    """A FeatureStore over ``repo_path`` configured by ``config_name`` (sqlite or Redis yaml).

    Relative paths in the yaml and the definitions resolve against ``repo_path``, whatever the
    process's working directory.
    """
    from feast import FeatureStore
    from feast.repo_config import FeastConfigError, RepoConfig
    from pydantic import ValidationError

    _check_config_name(config_name)
    repo_path = Path(repo_path).resolve()
    fs_yaml = repo_path / config_name
    if not fs_yaml.is_file():
        raise FileNotFoundError(f"Feast config not found: {fs_yaml} (run publish first?)")
    try:
        config = RepoConfig(**yaml.safe_load(_expand_env(fs_yaml.read_text())))
    except ValidationError as e:
        raise FeastConfigError(e, fs_yaml) from e
    config.repo_path = repo_path
    return FeatureStore(repo_path=str(repo_path), config=config)


def _online(store: FeatureStore, view: str, fields: tuple[str, ...], key: str, ids: list[int]):
    rows = [{key: int(i)} for i in ids]
    refs = [f"{view}:{f}" for f in fields]
    return store.get_online_features(features=refs, entity_rows=rows).to_dict()


def member_profiles(store: FeatureStore, member_ids: list[int]) -> dict[int, dict | None]:
    """``member_id -> {field: value}`` (plain Python; skills a list[str]); None if unknown."""
    if not member_ids:
        return {}
    got = _online(store, "member_profile", PROFILE_FIELDS, "member_id", member_ids)
    out: dict[int, dict | None] = {}
    for row, mid in enumerate(member_ids):
        values = {f: got[f][row] for f in PROFILE_FIELDS}
        if all(v is None for v in values.values()):
            out[int(mid)] = None
            continue
        values["skills"] = [str(s) for s in values["skills"] or []]
        out[int(mid)] = values
    return out


def _embeddings(
    store: FeatureStore, kind: str, ids: list[int], version: str
) -> dict[int, np.ndarray | None]:
    _check_version(version)
    return _lookup(store, f"{kind}_embedding_{version}", f"{kind}_id", ids)


def _lookup(store: FeatureStore, view: str, key: str, ids: list[int]) -> dict[int, Any]:
    if not ids:
        return {}
    got = _online(store, view, ("embedding",), key, ids)
    return {
        int(i): None if e is None else np.asarray(e, dtype=np.float32)
        for i, e in zip(ids, got["embedding"], strict=True)
    }


def member_interest(
    store: FeatureStore, member_ids: list[int], interest_version: str
) -> dict[int, np.ndarray | None]:
    """``member_id -> float32 (interest dim,)`` from ``member_interest_<iv>``; None if the
    batch run has not embedded that member yet."""
    _check_version(interest_version)
    return _lookup(store, f"member_interest_{interest_version}", "member_id", member_ids)


def member_embeddings(
    store: FeatureStore, member_ids: list[int], version: str
) -> dict[int, np.ndarray | None]:
    """``member_id -> float32 (dim,)`` from ``member_embedding_<version>``; None if unknown."""
    return _embeddings(store, "member", member_ids, version)


def job_embeddings(
    store: FeatureStore, job_ids: list[int], version: str
) -> dict[int, np.ndarray | None]:
    """``job_id -> float32 (dim,)`` from ``job_embedding_<version>``; None if unknown."""
    return _embeddings(store, "job", job_ids, version)
