"""The Feast adapter the workflow and serving call: publish embedding tables, read them online.

``publish`` turns ``embeddings/<version>/`` and ``data/members.parquet`` of a workspace into a
Feast repo at ``<workspace>/feature_repo/`` (the template definitions, ``versions.json`` listing
the served versions, parquet ``data/``; see feature_repo/repo.py), applies it and materializes
the new rows into the online store. Which rows may be published is ebr.data.tables's rule. The
read helpers return plain Python / numpy.

``feast`` is imported inside functions only: it costs ~6 s (it pulls in torch and fastapi).

Run the tests: ``pytest -q tests/pipelines/test_feast_store.py``

Size: the Feast adapter's two sides, publish (apply, materialize) and the online reads serving
makes; names come from ``ebr.feast_names``.
"""

from __future__ import annotations

import json
import os
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from ebr.config import Workspace
from ebr.data.records import Rejected
from ebr.data.tables import PROFILE_FIELDS, check_profiles, read_embedding_table, read_profiles
from ebr.feast_names import (
    PROFILE_TABLE,
    PROFILE_VIEW,
    corpus_names,
    embedding_names,
    interest_names,
    job_interest_names,
    popularity_names,
)
from ebr.io import atomic_write_bytes, atomic_write_json, atomic_write_parquet
from ebr.versions import check_version, feature_names, interest_paths, version_paths
from feature_repo.repo import (
    TEMPLATE_DIR,
    apply_definitions,
    model_facts,
    served_versions,
    write_repo,
)

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore

__all__ = [
    "PROFILE_FIELDS",
    "REFUSED_EXAMPLES",
    "check_profiles",
    "copy_workspace",
    "job_embeddings",
    "member_embeddings",
    "member_interest",
    "member_profiles",
    "open_store",
    "popularity",
    "publish",
    "rank_features",
    "request_features",
]

CONFIG_NAMES = (
    "feature_store.yaml",
    "feature_store.redis.yaml",
    "feature_store.redis_cluster.yaml",
)
# The config every reader and writer opens when none is named: the embedded sqlite store, or
# the one EBR_FEAST_CONFIG names (the demo's prod profile: feature_store.redis_cluster.yaml).
CONFIG_ENV = "EBR_FEAST_CONFIG"
ONLINE_STORE_FILE = "online_store"  # in a workspace's repo: the config it was published with
# Feast expands ${VAR} but has no default syntax; these apply when the variable is unset.
ENV_DEFAULTS = {"REDIS_CONNECTION_STRING": "127.0.0.1:6379"}
REFUSED_EXAMPLES = 5  # refused rows shown in publish's summary (the file lists them all)


def _check_config_name(config_name: str | None, repo: Path | None = None) -> str:
    """``config_name``, else ``EBR_FEAST_CONFIG``, else the config ``repo`` was last published
    with (``ONLINE_STORE_FILE``: a workspace remembers its online store), else sqlite; checked."""
    recorded = Path(repo or ".") / ONLINE_STORE_FILE
    name = (
        config_name
        or os.environ.get(CONFIG_ENV)
        or (recorded.read_text().strip() if repo is not None and recorded.is_file() else None)
        or "feature_store.yaml"
    )
    if name not in CONFIG_NAMES:
        where = (
            "config_name" if config_name else CONFIG_ENV if os.environ.get(CONFIG_ENV) else recorded
        )
        raise ValueError(f"{where} must be one of {CONFIG_NAMES}, got {name!r}")
    return name


def _dead_letters(refused: dict[str, list[Rejected]]) -> list[dict[str, Any]]:
    return [{"table": table, **r.to_json()} for table, rows in refused.items() for r in rows]


def publish(
    workspace_root: Path,
    version: str,
    template_dir: Path | None = None,
    config_name: str | None = None,
) -> dict[str, Any]:
    """Publish embeddings of ``version`` and member profiles to Feast, online and offline.

    Writes ``<workspace>/feature_repo/{definitions, versions.json, data/*.parquet}``
    atomically, applies the definitions (idempotent; the versions listed before stay served)
    and materializes this version's embedding views plus ``member_profile`` over a window
    covering every event timestamp. A model co-trained with a member-interest model
    (``lineage`` in its model.json) also publishes that interest version's batch embeddings as
    ``member_interest_<iv>``. Rows that break the record contract (profiles: ebr.data.records)
    or hold no usable vector (embeddings, ebr.data.tables: a null, unreadable or repeated id,
    no finite unit vector of the model's dim) are not published:
    ``refused`` counts them per table, ``refused_examples`` shows the first few and
    ``feature_repo/data/deadletter_<version>.jsonl`` lists them all (one JSON object a line:
    table, row, id, field, reason).
    Returns row counts, the applied feature views and seconds per step.
    """
    check_version(version)
    t0 = time.perf_counter()
    ws = Workspace(Path(workspace_root))
    repo, template = ws.feature_repo, Path(template_dir or TEMPLATE_DIR)
    config_name = _check_config_name(config_name, repo)
    published_at = datetime.now(UTC).replace(microsecond=0)
    dim, iv, interest_dim = model_facts(ws, version)
    served = {**served_versions(ws), version: iv}  # read before this publish writes anything

    refused: dict[str, list[Rejected]] = {}
    paths = version_paths(ws, version)
    jobs, refused["jobs"] = read_embedding_table(paths.jobs, "job_id", version, dim)
    # Without a model.json the towers' shared width is the job table's.
    dim = dim or len(jobs["embedding"].iloc[0])
    members, refused["members"] = read_embedding_table(paths.members, "member_id", version, dim)
    profiles, refused["profiles"] = read_profiles(ws.data / "members.parquet", published_at)
    interest = job_interest = None
    if iv is not None:
        path = interest_paths(ws, iv).members
        interest, refused["interest"] = read_embedding_table(path, "member_id", iv, interest_dim)
        job_interest, refused["job_interest"] = _job_interest(ws, iv, interest_dim)
    # Refused rows are not published; they are listed beside the published data.
    dead = _dead_letters(refused)
    dead_path = repo / "data" / f"deadletter_{version}.jsonl"
    atomic_write_bytes(dead_path, "".join(json.dumps(d) + "\n" for d in dead).encode())
    # Data first: apply validates that every FileSource path exists.
    atomic_write_parquet(repo / embedding_names("job", version).table, jobs)
    atomic_write_parquet(repo / embedding_names("member", version).table, members)
    atomic_write_parquet(repo / PROFILE_TABLE, profiles)
    if iv is not None and interest is not None and job_interest is not None:
        atomic_write_parquet(repo / interest_names(iv).table, interest)
        atomic_write_parquet(repo / job_interest_names(iv).table, job_interest)
    popularity = _popularity_tables(ws)
    for table in popularity:
        atomic_write_parquet(repo / table.attrs.pop("table"), table)
    write_repo(template, repo, served)
    versions = sorted(served, key=lambda v: int(v[1:]))
    t_write = time.perf_counter()

    # Applied in-process rather than via a `feast apply` subprocess: this process imports feast
    # anyway to materialize (a subprocess pays the ~6 s import again), failures arrive as
    # exceptions instead of exit codes, and apply_definitions runs the routine the CLI runs
    # after parsing, without the CLI's os.chdir() and sys.modules import of "definitions".
    store = open_store(repo, config_name)
    changes = apply_definitions(store, repo / "definitions.py")
    t_apply = time.perf_counter()

    tables = [jobs, members, *popularity] + [t for t in (interest, job_interest) if t is not None]
    stamps = pd.concat([t["event_timestamp"] for t in tables if len(t)])
    start = min(stamps.min(), pd.Timestamp(published_at)).to_pydatetime() - timedelta(seconds=1)
    end = max(stamps.max(), pd.Timestamp(published_at)).to_pydatetime() + timedelta(seconds=1)
    views = [*feature_names(version, iv).views, *(popularity_names(e).view for e in POPULARITY)]
    if iv is not None:  # the interest model's job embeddings: the ranker reads them online
        views.append(job_interest_names(iv).view)
    store.materialize(start_date=start, end_date=end, feature_views=views)
    atomic_write_bytes(repo / ONLINE_STORE_FILE, f"{config_name}\n".encode())  # readers open it
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
        "popularity_rows": {e: len(t) for e, t in zip(POPULARITY, popularity, strict=True)},
        "refused": {table: len(rows) for table, rows in refused.items()},
        "refused_examples": dead[:REFUSED_EXAMPLES],
        "dead_letter_path": str(dead_path),
        "dim": int(len(jobs["embedding"].iloc[0])),
        "write_s": round(t_write - t0, 3),
        "apply_s": round(t_apply - t_write, 3),
        "materialize_s": round(t_end - t_apply, 3),
        "total_s": round(t_end - t0, 3),
    }


POPULARITY = ("job", "company")  # the popularity views' entities, in table order
CORPORA_FILE = "corpora.json"  # the corpora a repo serves (definitions.py reads it)


def publish_corpus(
    workspace_root: Path, corpus: str, version: str, config_name: str | None = None
) -> dict[str, Any]:
    """Publish corpus ``corpus``'s article embeddings of ``version`` (``ebr.corpus.build``'s
    table) as the Feast view ``<corpus>_article_embedding_<version>``: listed in corpora.json,
    applied beside the job versions the repo serves (published first: ``publish``), and
    materialized. Rows without a usable vector are refused and counted."""
    from ebr.corpus.build import corpus_paths

    check_version(version)
    t0 = time.perf_counter()
    ws = Workspace(Path(workspace_root))
    repo, names = ws.feature_repo, corpus_names(corpus, version)
    config_name = _check_config_name(config_name, repo)
    served = served_versions(ws)
    if not served:
        raise FileNotFoundError(f"{repo} serves no model version yet: publish the jobs first")
    rows, refused = read_embedding_table(corpus_paths(ws, corpus).embeddings(version),
                                         "article_id", version)  # fmt: skip
    atomic_write_parquet(repo / names.table, rows)
    listed_path = repo / CORPORA_FILE
    listed = json.loads(listed_path.read_text())["corpora"] if listed_path.is_file() else []
    entry = {"name": corpus, "version": version}
    listed = sorted(
        [e for e in listed if e != entry] + [entry], key=lambda e: (e["name"], e["version"])
    )
    atomic_write_json(listed_path, {"corpora": listed})
    write_repo(TEMPLATE_DIR, repo, served)
    store = open_store(repo, config_name)
    changes = apply_definitions(store, repo / "definitions.py")
    stamps = rows["event_timestamp"]
    start = stamps.min().to_pydatetime() - timedelta(seconds=1)
    end = max(stamps.max(), pd.Timestamp(datetime.now(UTC))).to_pydatetime() + timedelta(seconds=1)
    store.materialize(start_date=start, end_date=end, feature_views=[names.view])
    return {"corpus": corpus, "version": version, "view": names.view, "articles": len(rows),
            "refused": len(refused), "apply_changes": changes,
            "total_s": round(time.perf_counter() - t0, 3)}  # fmt: skip


def article_embeddings(
    store: FeatureStore, corpus: str, version: str, article_ids: list[int]
) -> dict[int, np.ndarray | None]:
    """``article_id -> embedding`` online (None where unknown)."""
    return _lookup(store, corpus_names(corpus, version).view, "article_id", article_ids)


def _job_interest(ws: Workspace, iv: str, dim: int | None) -> tuple[pd.DataFrame, list[Rejected]]:
    """The jobs as interest model ``iv`` embeds them (the interest run writes them), or an
    empty table for interest embeddings made before it did (the ranker then reads none)."""
    path = interest_paths(ws, iv).jobs
    if path.is_file():
        return read_embedding_table(path, "job_id", iv, dim)
    empty = pd.DataFrame({
        "job_id": pd.Series(dtype="int64"), "embedding": pd.Series(dtype="object"),
        "model_version": pd.Series(dtype="object"),
        "event_timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
    })  # fmt: skip
    return empty, []


def _popularity_tables(ws: Workspace) -> list[pd.DataFrame]:
    """The job and company popularity change logs of the workspace's impression log
    (``ebr.rank.popularity``; empty without one), each with its repo table in ``attrs``."""
    from ebr.rank.popularity import popularity_tables

    log, jobs = ws.data / "impressions.parquet", ws.data / "jobs.parquet"
    if log.is_file() and jobs.is_file():
        impressions = pd.read_parquet(log, columns=["job_id", "ts", "outcome"])
        catalogue = pd.read_parquet(jobs, columns=["job_id", "company"])
    else:
        impressions = pd.DataFrame({"job_id": [], "ts": [], "outcome": []})
        catalogue = pd.DataFrame({"job_id": [], "company": []})
    out = list(popularity_tables(impressions, catalogue))
    for entity, table in zip(POPULARITY, out, strict=True):
        table.attrs["table"] = popularity_names(entity).table
    return out


def rank_features(
    store: FeatureStore,
    job_ids: list[int],
    companies: list[str | None],
    interest_version: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """What the ranker reads of candidates, in one online read: int64 [n, 6] job then company
    popularity counts (0 where none is recorded) and, with ``interest_version``, float32
    [n, dim] each job's ``job_interest_<iv>`` embedding (NaN rows where none)."""
    names = [popularity_names(e) for e in POPULARITY]
    width = sum(len(n.fields) for n in names)
    refs = [f"{n.view}:{f}" for n in names for f in n.fields]
    view = None if interest_version is None else job_interest_names(interest_version).view
    if view is not None:
        refs.append(f"{view}:embedding")
    if not job_ids:
        return np.zeros((0, width), dtype=np.int64), None if view is None else np.zeros((0, 0))
    rows = [{"job_id": int(j), "company": c or ""} for j, c in zip(job_ids, companies, strict=True)]
    got = store.get_online_features(features=refs, entity_rows=rows).to_dict()
    cols = [got[f] for n in names for f in n.fields]
    counts = np.array([[0 if v is None else v for v in col] for col in cols], dtype=np.int64).T
    if view is None:
        return counts, None
    vecs = got["embedding"]
    dim = next((len(v) for v in vecs if v is not None), 0)
    out = np.full((len(job_ids), dim), np.nan, dtype=np.float32)
    for i, v in enumerate(vecs):
        if v is not None and len(v) == dim:
            out[i] = v
    return counts, out


def popularity(store: FeatureStore, job_ids: list[int], companies: list[str | None]) -> np.ndarray:
    """int64 [n, 6]: ``rank_features``' popularity counts alone."""
    return rank_features(store, job_ids, companies)[0]


def _expand_env(text: str) -> str:
    # Same expansion as Feast's loader (os.path.expandvars), plus ENV_DEFAULTS for unset ${VAR}.
    def default(m: re.Match[str]) -> str:
        name = m.group(1)
        return ENV_DEFAULTS[name] if name not in os.environ and name in ENV_DEFAULTS else m[0]

    return os.path.expandvars(re.sub(r"\$\{(\w+)\}", default, text))


def open_store(repo_path: Path, config_name: str | None = None) -> FeatureStore:
    """A FeatureStore over ``repo_path`` configured by ``config_name`` (sqlite, Redis or Redis
    Cluster yaml; by default the one ``EBR_FEAST_CONFIG`` names, else sqlite).

    Relative paths in the yaml and the definitions resolve against ``repo_path``, whatever the
    process's working directory.
    """
    from feast import FeatureStore
    from feast.repo_config import FeastConfigError, RepoConfig
    from pydantic import ValidationError

    repo_path = Path(repo_path).resolve()
    config_name = _check_config_name(config_name, repo_path)
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
    got = _online(store, PROFILE_VIEW, PROFILE_FIELDS, "member_id", member_ids)
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
    names = embedding_names(kind, check_version(version))
    return _lookup(store, names.view, names.key, ids)


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
    names = interest_names(check_version(interest_version))
    return _lookup(store, names.view, names.key, member_ids)


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


def request_features(
    store: FeatureStore, service: str | FeatureService, member_ids: list[int], views: dict[str, str]
) -> dict[int, dict[str, Any] | None]:
    """One online read of everything a request tower needs, through its release's feature
    service ``service`` (``request_features_<v>``: the profile, the version's batch member
    embedding and its co-trained member-interest view, nothing of another version).

    ``views`` names the service's views by role: ``{"profile": "member_profile", "member":
    "member_embedding_v2", "interest": "member_interest_v1"}`` (``interest`` absent for a
    model without one). Returns ``member_id -> profile fields + "member_embedding" and
    "interest"`` (float32 arrays or None until a batch run embeds the member), or None for a
    member without a profile.
    """
    if not member_ids:
        return {}
    rows = [{"member_id": int(m)} for m in member_ids]
    # Resolving a service by name parses it from the registry on every call (~7 ms): callers
    # on the request path pass the resolved object (0.4 ms a read).
    features = store.get_feature_service(service) if isinstance(service, str) else service
    got = store.get_online_features(
        features=features, entity_rows=rows, full_feature_names=True
    ).to_dict()
    profile = views["profile"]
    out: dict[int, dict[str, Any] | None] = {}
    for row, mid in enumerate(member_ids):
        values = {f: got[f"{profile}__{f}"][row] for f in PROFILE_FIELDS}
        if all(v is None for v in values.values()):
            out[int(mid)] = None
            continue
        values["skills"] = [str(x) for x in values["skills"] or []]
        for key, role in (("member_embedding", "member"), ("interest", "interest")):
            vec = got[f"{views[role]}__embedding"][row] if role in views else None
            values[key] = None if vec is None else np.asarray(vec, dtype=np.float32)
        out[int(mid)] = values
    return out


def copy_workspace(src: Path, dst: Path, publish_versions: bool = True) -> Workspace:
    """A copy of workspace ``src`` at ``dst`` with its own Feast registry and online store.

    Feast's registry records the sqlite online store by absolute path: a copied registry would
    make every Feast write in the copy land in the ORIGINAL workspace's online store. So the
    copy starts without them and, with ``publish_versions``, publishes each version ``src``
    serves again (a staging copy, a benchmark's or a test's private workspace).
    """
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("serving-log", "stream"))
    for name in ("registry.db", "online.db"):
        (Path(dst) / "feature_repo" / "data" / name).unlink(missing_ok=True)
    ws = Workspace(Path(dst))
    if publish_versions:
        for version in sorted(served_versions(ws), key=lambda v: int(v[1:])):
            publish(ws.root, version)
    return ws
