"""Feast definitions: job/member entities, versioned embedding tables, member profiles.

Feast holds embedding TABLES only (lookups by id); nearest-neighbour search lives in our FAISS
index slots. Every source path is relative to this folder: Feast resolves it against the repo
path for ``materialize``, ``get_historical_features`` and ``push(..., ONLINE_AND_OFFLINE)``.

Apply by hand: ``cd <workspace>/feature_repo && feast apply`` (``feature_repo/store.py`` does the
same programmatically in ``publish``).
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Bool, Float32, Float64, Int64, String

# Model versions whose embedding tables this repo serves. ``store.publish`` rewrites this line in
# the workspace copy, so the file `feast apply` reads always matches the registry.
EMBEDDING_VERSIONS: tuple[str, ...] = ("v1",)

# Embeddings only change with a new model version; a short TTL would hide them from
# point-in-time joins long before a retrain.
EMBEDDING_TTL = timedelta(days=365)

# A job posting; ids come from the marketplace tables.
job = Entity(name="job", join_keys=["job_id"], value_type=ValueType.INT64)

# A job seeker; the request tower embeds their profile (and query).
member = Entity(name="member", join_keys=["member_id"], value_type=ValueType.INT64)

# Member profiles as published (publish stamps event_timestamp with the publish time).
member_profile_source = FileSource(
    name="member_profile_source",
    path="data/member_profiles.parquet",
    timestamp_field="event_timestamp",
)

# Profile fields that serving needs for filters (geo, remote, employment type) and featurizing.
member_profile = FeatureView(
    name="member_profile",
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


def embedding_views(version: str) -> dict[str, object]:
    """Sources, push sources, feature views and services of one model version, keyed by name.

    The feature views read from the push source, so ``store.push`` updates them at once, and
    ``materialize`` loads the push source's parquet batch source.
    """
    objects: dict[str, object] = {}
    for kind, entity in (("job", job), ("member", member)):
        batch = FileSource(
            name=f"{kind}_embedding_source_{version}",
            path=f"data/{kind}_embeddings_{version}.parquet",
            timestamp_field="event_timestamp",
        )
        push = PushSource(name=f"{kind}_embedding_push_{version}", batch_source=batch)
        view = FeatureView(
            name=f"{kind}_embedding_{version}",
            entities=[entity],
            ttl=EMBEDDING_TTL,
            schema=[
                Field(name=f"{kind}_id", dtype=Int64),
                Field(name="embedding", dtype=Array(Float32)),
                Field(name="model_version", dtype=String),
            ],
            source=push,
            online=True,
        )
        objects[batch.name] = batch
        objects[push.name] = push
        objects[view.name] = view
    job_view = objects[f"job_embedding_{version}"]
    member_view = objects[f"member_embedding_{version}"]
    # What the request (query) side of model `version` reads per request.
    objects[f"request_features_{version}"] = FeatureService(
        name=f"request_features_{version}", features=[member_view, member_profile]
    )
    # What the item side of model `version` reads (index builds, re-ranking).
    objects[f"item_features_{version}"] = FeatureService(
        name=f"item_features_{version}", features=[job_view]
    )
    return objects


# `feast apply` discovers objects among module attributes, so each version's objects become
# module-level names (job_embedding_v1, member_embedding_push_v1, request_features_v1, ...).
for _version in EMBEDDING_VERSIONS:
    globals().update(embedding_views(_version))
