"""Every Feast name the platform uses, built in this one place.

Stdlib only, on purpose: ``feature_repo.repo.write_repo`` copies this file verbatim into each
workspace's Feast repo (as ``feast_names.py``) beside ``definitions.py``, which declares its
objects under these names and runs under ``feast apply`` without the code tree on its path.
The core (``ebr.versions.feature_names``), the publish step, serving and the streaming job's
push sink read the same functions.

Per model version ``v`` (``kind`` is "job" or "member") and member-interest version ``iv``:

    view          {kind}_embedding_{v}           member_interest_{iv}        member_profile
                                                 job_interest_{iv} (its jobs: the ranker's)
    push source   {kind}_embedding_push_{v}      member_interest_push_{iv}
    batch source  {kind}_embedding_source_{v}    member_interest_source_{iv} member_profile_source
    table         data/{kind}_embeddings_{v}.parquet   data/member_interest_{iv}.parquet
                  data/member_profiles.parquet
    services      request_features_{v} (member, profile, interest views), item_features_{v}

Per corpus ``c`` (``ebr.corpus``) of version ``v``: the view ``{c}_article_embedding_{v}``
(entity ``article``, key ``article_id``) from ``data/{c}_articles_{v}.parquet``; the corpora a
repo serves are listed in ``corpora.json`` beside ``versions.json``.

Shared by every version: ``job_popularity`` and ``company_popularity`` (engagement counts of
the trailing days, ``ebr.rank.popularity``; the ranker reads both in one online read), from
``data/job_popularity.parquet`` and ``data/company_popularity.parquet``.
"""

from __future__ import annotations

from dataclasses import dataclass

PROFILE_VIEW = "member_profile"
PROFILE_SOURCE = "member_profile_source"
PROFILE_TABLE = "data/member_profiles.parquet"
POPULARITY_DAYS = 7  # the trailing window the popularity counts cover


@dataclass(frozen=True)
class PopularityNames:
    """One popularity view's Feast objects, its table and its count fields."""

    view: str
    batch_source: str
    table: str
    key: str
    fields: tuple[str, ...]


def popularity_names(entity: str) -> PopularityNames:
    """The popularity view of ``entity`` ("job" or "company")."""
    if entity not in ("job", "company"):
        raise ValueError(f"entity must be 'job' or 'company', got {entity!r}")
    counts = ("impressions", "clicks", "applies")
    return PopularityNames(
        f"{entity}_popularity",
        f"{entity}_popularity_source",
        f"data/{entity}_popularity.parquet",
        "job_id" if entity == "job" else "company",
        tuple(f"{entity}_{c}_{POPULARITY_DAYS}d" for c in counts),
    )


EMBEDDING_KINDS = ("job", "member")  # entities with a two-tower embedding view per version


@dataclass(frozen=True)
class EmbeddingNames:
    """One embedding view's Feast objects and the parquet table behind them."""

    view: str
    push_source: str
    batch_source: str
    table: str  # relative to the repo folder (Feast resolves it against the repo path)
    key: str  # the entity's join key


def embedding_names(kind: str, version: str) -> EmbeddingNames:
    """The two-tower embedding view of ``kind`` ("job" or "member") for model ``version``."""
    if kind not in EMBEDDING_KINDS:
        raise ValueError(f"kind must be one of {EMBEDDING_KINDS}, got {kind!r}")
    return EmbeddingNames(
        f"{kind}_embedding_{version}",
        f"{kind}_embedding_push_{version}",
        f"{kind}_embedding_source_{version}",
        f"data/{kind}_embeddings_{version}.parquet",
        f"{kind}_id",
    )


def corpus_names(corpus: str, version: str) -> EmbeddingNames:
    """The article embedding view of corpus ``corpus`` (its encoder generation ``version``)."""
    view = f"{corpus}_article_embedding_{version}"
    return EmbeddingNames(
        view,
        f"{corpus}_article_embedding_push_{version}",
        f"{corpus}_article_embedding_source_{version}",
        f"data/{corpus}_articles_{version}.parquet",
        "article_id",
    )


def interest_names(interest_version: str) -> EmbeddingNames:
    """The member-interest embedding view of interest model ``interest_version``."""
    view = f"member_interest_{interest_version}"
    return EmbeddingNames(
        view,
        f"member_interest_push_{interest_version}",
        f"member_interest_source_{interest_version}",
        f"data/{view}.parquet",
        "member_id",
    )


def job_interest_names(interest_version: str) -> EmbeddingNames:
    """The jobs as member-interest model ``interest_version``'s item tower embeds them: the
    ranker's member-interest cosine (``job_interest_<iv>``)."""
    view = f"job_interest_{interest_version}"
    return EmbeddingNames(
        view,
        f"job_interest_push_{interest_version}",
        f"job_interest_source_{interest_version}",
        f"data/{view}.parquet",
        "job_id",
    )


def request_service(version: str) -> str:
    """What the request tower of ``version`` reads per request."""
    return f"request_features_{version}"


def item_service(version: str) -> str:
    """What the item side of ``version`` reads (index builds, re-ranking)."""
    return f"item_features_{version}"


@dataclass(frozen=True)
class FeatureNames:
    """The Feast objects a model version's release reads."""

    request_service: str  # what the request tower of the version reads per request
    item_service: str  # what its item side reads
    job_view: str  # the version's batch job embeddings
    member_view: str  # the version's batch member embeddings (JYMBII)
    profile_view: str  # member profiles (shared by every version)
    interest_view: str | None  # the co-trained member-interest embeddings (None: no input)

    @property
    def views(self) -> tuple[str, ...]:
        """Every feature view the two services read."""
        views = (self.job_view, self.member_view, self.profile_view, self.interest_view)
        return tuple(v for v in views if v is not None)

    def request_views(self) -> dict[str, str]:
        """The request service's views by role: profile, member and (when any) interest."""
        roles = {"profile": self.profile_view, "member": self.member_view}
        return roles | ({"interest": self.interest_view} if self.interest_view else {})


def release_names(version: str, interest_version: str | None) -> FeatureNames:
    """The feature services and views of model ``version`` co-trained with ``interest_version``
    (None: none). Versions are not checked here (``ebr.versions.feature_names`` does)."""
    return FeatureNames(
        request_service(version),
        item_service(version),
        embedding_names("job", version).view,
        embedding_names("member", version).view,
        PROFILE_VIEW,
        None if interest_version is None else interest_names(interest_version).view,
    )
