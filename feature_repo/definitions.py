"""Feast definitions: job/member entities, versioned embedding tables, member profiles.

Feast holds embedding TABLES only (lookups by id); nearest-neighbour search lives in our FAISS
index slots. Every source path is relative to this folder: Feast resolves it against the repo
path for ``materialize``, ``get_historical_features`` and ``push(..., ONLINE_AND_OFFLINE)``.

The model versions served are data, not code: ``versions.json`` beside this file lists them,
each with the member-interest version it was co-trained with (null for none)::

    {"versions": [{"version": "v1", "interest_version": "v1"}]}

``feature_repo/store.py``'s ``publish`` writes it (and copies this file verbatim, with
``feast_names.py`` beside it: every name below is built there, ``ebr/feast_names.py`` in the code
tree); a missing or malformed list fails the import, naming the file.

Apply by hand: ``cd <workspace>/feature_repo && feast apply`` (``feature_repo/store.py`` does the
same programmatically in ``publish``).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import timedelta
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TypeGuard

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Bool, Float32, Float64, Int64, String

HERE = Path(__file__).resolve().parent
VERSIONS_FILE = HERE / "versions.json"
VERSIONS_FORMAT = '{"versions": [{"version": "v1", "interest_version": "v1" or null}, ...]}'
CORPORA_FILE = HERE / "corpora.json"
CORPORA_FORMAT = '{"corpora": [{"name": "esco", "version": "v1"}, ...]}'


def _is_version(value: object) -> TypeGuard[str]:
    # ebr.versions.check_version's rule ("v" + digits), restated: `feast apply` runs this file
    # without the code tree on its path; publish checks with ebr's own rule when writing.
    digits = value[1:] if isinstance(value, str) and value[:1] == "v" else ""
    return digits.isascii() and digits.isdigit()


def read_versions(path: Path) -> dict[str, str | None]:
    """Model version -> co-trained member-interest version (None: none), as ``path`` lists."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: it lists the model versions this repo serves ({VERSIONS_FORMAT});"
            " feature_repo.store.publish writes it"
        )
    try:
        listed = json.loads(path.read_text())["versions"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is malformed ({e!r}); expected {VERSIONS_FORMAT}") from e
    if not isinstance(listed, list) or not listed:
        raise ValueError(f"{path} lists no versions; expected {VERSIONS_FORMAT}")
    out: dict[str, str | None] = {}
    for entry in listed:
        version = entry.get("version") if isinstance(entry, dict) else None
        interest = entry.get("interest_version") if isinstance(entry, dict) else None
        if not _is_version(version) or not (interest is None or _is_version(interest)):
            raise ValueError(f"{path}: bad entry {entry!r}; expected {VERSIONS_FORMAT}")
        if version in out:
            raise ValueError(f"{path} lists {version!r} twice")
        out[version] = interest
    return out


def _load_names(path: Path) -> ModuleType:
    """The sibling ``feast_names.py``, loaded by its path: `feast apply` puts the repo folder on
    ``sys.path``, a loader of this file by path (``feature_repo.repo``) may not."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: feature_repo.store.publish copies it here")
    spec = importlib.util.spec_from_file_location("feast_names", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["feast_names"] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


names = _load_names(HERE / "feast_names.py")

# Model version -> the member-interest version it was co-trained with (its lineage).
INTEREST_OF: dict[str, str | None] = read_versions(VERSIONS_FILE)
# Model versions whose embedding tables this repo serves.
EMBEDDING_VERSIONS: tuple[str, ...] = tuple(INTEREST_OF)

# Embeddings only change with a new model version; a short TTL would hide them from
# point-in-time joins long before a retrain.
EMBEDDING_TTL = timedelta(days=365)

# A job posting; ids come from the marketplace tables.
job = Entity(name="job", join_keys=["job_id"], value_type=ValueType.INT64)

# A job seeker; the request tower embeds their profile (and query).
member = Entity(name="member", join_keys=["member_id"], value_type=ValueType.INT64)

# Member profiles as published (publish stamps event_timestamp with the publish time).
member_profile_source = FileSource(
    name=names.PROFILE_SOURCE,
    path=names.PROFILE_TABLE,
    timestamp_field="event_timestamp",
)

# Profile fields that serving needs for filters (geo, remote, employment type) and featurizing.
member_profile = FeatureView(
    name=names.PROFILE_VIEW,
    entities=[member],
    ttl=EMBEDDING_TTL,
    schema=[
        Field(name="member_id", dtype=Int64),
        Field(name="headline", dtype=String),
        Field(name="skills", dtype=Array(String)),
        Field(name="seniority", dtype=String),
        Field(name="city", dtype=String),
        Field(name="country", dtype=String),
        Field(name="lat", dtype=Float64),
        Field(name="lon", dtype=Float64),
        Field(name="open_to_remote", dtype=Bool),
        Field(name="max_commute_km", dtype=Float64),
        Field(name="preferred_employment_type", dtype=String),
    ],
    source=member_profile_source,
    online=True,
)


# An employer; popularity counts are kept per company as well as per job.
company = Entity(name="company", join_keys=["company"], value_type=ValueType.STRING)


# Engagement counts over the trailing days, one change-log row per day boundary
# (ebr.rank.popularity; publish recomputes them from the impression log): ranker features.
def _popularity_view(entity: Entity, kind: str, key_type: object) -> dict[str, object]:
    n = names.popularity_names(kind)
    source = FileSource(name=n.batch_source, path=n.table, timestamp_field="event_timestamp")
    feature_view = FeatureView(
        name=n.view,
        entities=[entity],
        ttl=EMBEDDING_TTL,  # a count that stops changing stays the latest row (no expiry)
        schema=[Field(name=n.key, dtype=key_type), *(Field(name=f, dtype=Int64) for f in n.fields)],
        source=source,
        online=True,
    )
    return {n.batch_source: source, n.view: feature_view}


globals().update(_popularity_view(job, "job", Int64))
globals().update(_popularity_view(company, "company", String))


def _embedding_view(n: names.EmbeddingNames, entity: Entity) -> dict[str, object]:
    """A parquet batch source, a push source over it and the online embedding view ``n.view``."""
    batch_source = FileSource(name=n.batch_source, path=n.table, timestamp_field="event_timestamp")
    push_source = PushSource(name=n.push_source, batch_source=batch_source)
    feature_view = FeatureView(
        name=n.view,
        entities=[entity],
        ttl=EMBEDDING_TTL,
        schema=[
            Field(name=n.key, dtype=Int64),
            Field(name="embedding", dtype=Array(Float32)),
            Field(name="model_version", dtype=String),
        ],
        source=push_source,
        online=True,
    )
    return {n.batch_source: batch_source, n.push_source: push_source, n.view: feature_view}


@cache  # one set of objects per interest version, however many models share it
def interest_views(interest_version: str) -> dict[str, object]:
    """The batch member-interest embeddings of one interest-model version
    (``member_interest_<iv>``): an input of the request tower, looked up per request; and its
    item tower's job embeddings (``job_interest_<iv>``), which the ranker reads."""
    return {
        **_embedding_view(names.interest_names(interest_version), member),
        **_embedding_view(names.job_interest_names(interest_version), job),
    }


def embedding_views(version: str, interest_version: str | None = None) -> dict[str, object]:
    """Sources, push sources, feature views and services of one model version, keyed by name.

    The feature views read from the push source, so ``store.push`` updates them at once, and
    ``materialize`` loads the push source's parquet batch source. ``interest_version`` adds the
    co-trained member-interest view to the version's request feature service.
    """
    objects: dict[str, object] = {}
    for kind, entity in (("job", job), ("member", member)):
        objects.update(_embedding_view(names.embedding_names(kind, version), entity))
    which = names.release_names(version, interest_version)
    request_views = [objects[which.member_view], member_profile]
    if interest_version is not None:
        interest = interest_views(interest_version)
        objects.update(interest)
        request_views.append(interest[which.interest_view])
    # What the request (query) side of model `version` reads per request.
    objects[which.request_service] = FeatureService(
        name=which.request_service, features=request_views
    )
    # What the item side of model `version` reads (index builds, re-ranking).
    objects[which.item_service] = FeatureService(
        name=which.item_service, features=[objects[which.job_view]]
    )
    return objects


# `feast apply` discovers objects among module attributes, so each version's objects become
# module-level names (job_embedding_v1, member_embedding_push_v1, request_features_v1, ...).
for _version in EMBEDDING_VERSIONS:
    globals().update(embedding_views(_version, INTEREST_OF[_version]))


# An article of a knowledge-base corpus (ebr.corpus); ids are per corpus.
article = Entity(name="article", join_keys=["article_id"], value_type=ValueType.INT64)


def read_corpora(path: Path) -> list[tuple[str, str]]:
    """(corpus, version) pairs ``corpora.json`` lists (none when the file is absent)."""
    if not path.is_file():
        return []
    try:
        listed = json.loads(path.read_text())["corpora"]
        pairs = [(str(c["name"]), str(c["version"])) for c in listed]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is malformed ({e!r}); expected {CORPORA_FORMAT}") from e
    for name, version in pairs:
        if not (name.isascii() and name.replace("_", "").isalnum()) or not _is_version(version):
            raise ValueError(f"{path}: bad entry {name!r} {version!r}; expected {CORPORA_FORMAT}")
    return pairs


# Each corpus's article embeddings: looked up by id (a RAG caller's "more like this").
for _corpus, _version in read_corpora(CORPORA_FILE):
    globals().update(_embedding_view(names.corpus_names(_corpus, _version), article))
