"""HTTP and application schemas for the serving layer (pydantic v2).

Every request body is validated here, at the boundary, so a bad request is a 422 that names the
field, never a 500 from deep inside a replica. ``AppArgs`` is the single input of
``serving.app.build_app``: Serve passes it the ``args`` mapping of a config YAML.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    field_validator,
    model_validator,
)

from ebr.ids import MAX_ID, MIN_ID

MAX_K = 100  # one results page is 10; 100 covers re-rankers without letting k scan the index
MAX_QUERY_CHARS = 512  # longer than any real job search; bounds tokenizer work per request
# One id contract with the stream (ebr.ids): ids are int64 entity keys in Feast, from 1; a larger
# int must fail here, not in the store.
MAX_MEMBER_ID = MAX_ID
# Arms of one experiment. Every replica keeps each arm's release loaded for the whole
# experiment (serving.release_server.MAX_RELEASES_PER_REPLICA is derived from this).
MAX_ARMS = 16

Query = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_QUERY_CHARS),
]
# Strict ints: a JSON "10" or 10.5 or true is a client bug worth a 422, not something to coerce.
MemberId = Annotated[int, Field(strict=True, ge=MIN_ID, le=MAX_ID)]
TopK = Annotated[int, Field(strict=True, ge=1, le=MAX_K)]
Cap = Annotated[int, Field(strict=True, ge=1, le=MAX_K)]
Depth = Annotated[int, Field(strict=True, ge=1, le=2000)]
Retrieval = Literal["ebr", "term", "hybrid"]  # ebr.index.query.search.RETRIEVALS
RequestKey = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")
]
ReleaseId = Annotated[str, StringConstraints(pattern=r"^rel-v[0-9]+-[0-9]{8}T[0-9]{12}$")]


def require_query_or_member(body: Any) -> Any:
    """``body`` (a request with ``query`` and ``member_id``) if it has either; else the
    ValueError a 422 carries."""
    if body.query is None and body.member_id is None:
        raise ValueError("at least one of 'query' or 'member_id' is required")
    return body


class ParsedFilter(dict[str, Any]):
    """A request's filter as sent (the dict) with the ``Filter`` validation parsed from it."""

    def __init__(self, value: dict[str, Any], parsed: Any) -> None:
        super().__init__(value)
        self.parsed = parsed


class SearchRequest(BaseModel):
    """``POST /v1/search`` body: a free-text query, a member (personalisation), or both."""

    model_config = ConfigDict(extra="forbid")  # a typo ('querry') must not be silently ignored

    query: Query | None = Field(default=None, description="free-text job search")
    member_id: MemberId | None = Field(default=None, description="the searching member")
    k: TopK = Field(default=10, description=f"number of jobs to return, 1..{MAX_K}")
    filter: dict[str, Any] | None = Field(
        default=None,
        description="strict filter applied during the search, e.g. "
        '{"and": [{"term": {"seniority": ["senior", "lead"]}}, '
        '{"geo_radius": {"lat": 52.5, "lon": 13.4, "km": 50}}]}',
    )
    explain: bool = Field(
        default=False,
        description="include how the request was answered: per result its retrieval scores, "
        "the ranker's per-feature contributions and its crowding demotion; in the plan the "
        "funnel (eligible, retrieved, ranked, crowded out) and milliseconds per stage",
    )
    max_per_company: Cap | None = Field(
        default=None,
        description="at most this many results of one company on the page, backfilled from "
        "further candidates (default: the release's)",
    )
    max_per_city: Cap | None = Field(
        default=None, description="at most this many results in one city (default: the release's)"
    )
    rank: bool = Field(
        default=True,
        description="false: this request keeps the retrieval's order (the release's ranker "
        "does not run; crowding still applies)",
    )
    candidates: Depth | None = Field(
        default=None,
        description="candidates retrieved, then ranked and crowded (default: the release's, "
        "200); the page is k of them",
    )
    retrieval: Retrieval | None = Field(
        default=None,
        description="ebr (embeddings), term (BM25 over the job text) or hybrid (both, fused "
        "by reciprocal rank); default: the deployment's (AppArgs.retrieval)",
    )
    request_key: RequestKey | None = Field(
        default=None,
        description="an anonymous client's stable key (session or cookie id): experiments "
        "assign anonymous requests by it (members by member_id)",
    )
    release: ReleaseId | None = Field(
        default=None,
        description="answer with this release instead of the routed one (the relevance "
        "page's side-by-side): one the replica keeps (live, an experiment arm, the rollback "
        "target); such a request takes no part in an experiment",
    )

    @field_validator("filter")
    @classmethod
    def _valid_filter(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        from ebr.index.query.filters import FilterError, parse_filter

        try:
            parsed = parse_filter(value)
        except FilterError as e:  # the message carries the path, e.g. filter.and[1].range
            raise ValueError(str(e)) from None
        return ParsedFilter(value, parsed)

    @property
    def parsed_filter(self) -> Any:
        """The ``ebr.index.query.filters.Filter`` parsed while validating ``filter`` (None
        without one): what the index applies, parsed once per request."""
        return self.filter.parsed if isinstance(self.filter, ParsedFilter) else None

    @model_validator(mode="after")
    def _query_or_member(self) -> SearchRequest:
        return require_query_or_member(self)


class JobHit(BaseModel):
    """One retrieved job: its display columns plus the cosine score of the match.

    Null policy (``ebr.data.records``): ``job_id`` and ``title`` always exist; every other
    display field may be null (unknown), and a client shows it as absent."""

    job_id: int
    title: str
    company: str | None = None
    city: str | None = None
    country: str | None = None
    seniority: str | None = None
    remote: bool | None = None
    employment_type: str | None = None
    posted_at: datetime | None = None
    lat: float | None = Field(default=None, description="the job's place (degrees)")
    lon: float | None = None
    score: float = Field(
        description="what the page is ordered by: the release's ranker's score when it ranked "
        "the request (a search's jobs that match what was typed come first, each group by "
        "score), else the retrieval's (ebr: cosine similarity of request and job "
        "embeddings; term: BM25; hybrid: the fused score)"
    )
    explain: dict[str, Any] | None = Field(
        default=None,
        description="with explain: retrieval (rank, score, ebr_cosine, head_cosines, bm25, "
        "term_coverage), ranker (score, rank, contributions per feature) and crowding "
        "(ranked_at, position, promoted_by: places gained from crowded-out jobs); the jobs "
        "crowding demoted off the page are in the plan (crowding.crowded_out)",
    )


class SearchResponse(BaseModel):
    """Results of a search or a recommendation feed, best first."""

    results: list[JobHit]
    # The release's own time answering (``LoadedRelease.answer``'s ``answer_ms``), for the
    # ``Server-Timing`` header beside ``took_ms``; not part of the body.
    _answer_ms: float | None = PrivateAttr(default=None)
    model_version: str = Field(description="embedding version of both request and index")
    slot: str = Field(description="index slot that answered (immutable, named by build time)")
    took_ms: float = Field(description="server-side time from request to response, ms")
    plan: dict[str, Any] | None = Field(
        default=None, description="with explain: strategy, eligible count, probes, rounds"
    )
    query_understood: bool | None = Field(
        default=None,
        description="false when no word of the query is known to the model: the results then "
        "come from the member alone, or are empty for an anonymous search; null without a query",
    )
    unknown_words: list[str] = Field(
        default_factory=list, description="normalised query words the model never saw"
    )
    corrected_query: str | None = Field(
        default=None,
        description="what was searched when a query word was misspelled: the query's "
        "normalised words, each word neither the model nor the catalogue knows replaced by the "
        "closest catalogue word; null when nothing was corrected",
    )
    notice: str | None = Field(default=None, description="why results are empty or partial")
    retrieval: str | None = Field(
        default=None, description="the retrieval that answered (null: nothing to search with)"
    )
    release: str = Field(description="the release that answered (encoder and index alike)")
    arm: str | None = Field(default=None, description="the request's experiment arm, if any")
    experiment: str | None = Field(default=None, description="the running experiment, if any")
    request_id: str = Field(description="this response's id in the impression log")


class HealthResponse(BaseModel):
    """``GET /healthz`` (readiness): whether the live release serves, and everything on the
    request path that is degraded, each with its reason in ``problems``.

    ``status``: ``ok`` (HTTP 200); ``degraded`` (HTTP 200: requests are answered, something
    is wrong, see ``problems``); ``loading`` (HTTP 503: the replica is loading the releases
    it served before, and replaying their slot logs); ``down`` (HTTP 503: the live release
    cannot serve)."""

    status: Literal["ok", "degraded", "loading", "down"]
    ok: bool = Field(description="status == 'ok'")
    problems: list[str] = Field(default_factory=list, description="what is wrong, and why")
    release: str = Field(description="the live release")
    slot: str | None = None
    model_version: str | None = None
    encoder_model_version: str | None = None
    member_interest_version: str | None = None  # the co-trained interest model it reads
    item_count: int | None = None
    recall_at_10: float | None = None
    serving: list[str] = Field(default_factory=list, description="live and experiment arms")
    experiment: str | None = None
    releases: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per release kept loaded: role, state (ready, loading, failed, absent), "
        "reason, loads (times loaded here), slot log position (lsn) and log_problems",
    )
    state_file: dict[str, Any] = Field(
        default_factory=dict, description="releases/state.json: good, or stale with reason"
    )
    impression_log: dict[str, Any] = Field(
        default_factory=dict, description="the side log's status, written and dropped records"
    )


class LivenessResponse(BaseModel):
    """``GET /livez``: whether this replica's process works (a restart would help when not):
    its event loop answers, the release worker is not stuck, the side log's writer runs."""

    status: Literal["alive", "stuck"]
    problems: list[str] = Field(default_factory=list)


class ReleaseView(BaseModel):
    """A release requests may reach, as ``GET /v1/releases`` shows it."""

    release: str
    model_version: str
    slot: str
    member_interest_version: str | None
    role: str = Field(description="live, arm:<name>")


class ReleasesResponse(BaseModel):
    live: str
    experiment: dict[str, Any] | None
    serving: list[ReleaseView]


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    release: ReleaseId


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: ReleaseId | None = Field(default=None, description="default: the previous live release")


class ArmSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    arm: Annotated[
        str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    ]
    release: ReleaseId
    weight: Annotated[float, Field(gt=0, le=1)]


class ExperimentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[
        str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    ]
    arms: Annotated[list[ArmSpec], Field(min_length=2, max_length=MAX_ARMS)]
    salt: str | None = Field(default=None, max_length=128, description="default: the name")


SetName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
]


class JudgmentRequest(BaseModel):
    """``PUT /v1/judgments/{set}``: one result marked relevant or not for what was searched."""

    model_config = ConfigDict(extra="forbid")
    query: Query | None = Field(default=None, description="what was typed (none: a feed)")
    member_id: MemberId | None = Field(default=None, description="the signed-in member")
    job_id: Annotated[int, Field(strict=True, ge=MIN_ID, le=MAX_ID)]
    relevant: Annotated[bool, Field(strict=True)]

    @model_validator(mode="after")
    def _query_or_member(self) -> JudgmentRequest:
        return require_query_or_member(self)


class SampleMember(BaseModel):
    member_id: int
    headline: str | None = None
    city: str | None = None
    country: str | None = None
    lat: float | None = None
    lon: float | None = None


class Place(BaseModel):
    """A city found by name (GeoNames), for a geo filter typed by place."""

    name: str
    country: str
    lat: float
    lon: float
    population: int


class ErrorResponse(BaseModel):
    """Body of every 4xx the API returns itself (validation errors keep FastAPI's ``detail``)."""

    detail: str


class AppArgs(BaseModel):
    """Arguments of ``build_app`` (the ``args:`` block of ``serving/config.yaml``)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt config key fails the deploy

    workspace: str = Field(description="workspace root (models/, feature_repo/, slots/, releases/)")
    # Fractions of a core: the machines have 2 cores and a replica reserves 1 by default, so
    # whole-CPU replicas would leave the third deployment pending forever.
    # Where a release's encoder and index run (serving.release_server): "ingress", in the
    # ingress replica (no hop between deployments: the fastest on the 2-core machines), or
    # "deployment", a ReleaseServer deployment of server_replicas x server_num_cpus (towers
    # that need replicas of their own, e.g. on GPUs).
    release_server: Literal["ingress", "deployment"] = "ingress"
    server_num_cpus: float = Field(default=0.5, gt=0, le=64)
    ingress_num_cpus: float = Field(default=0.25, gt=0, le=64)
    server_replicas: int = Field(default=1, ge=1, le=64)
    # Ingress replicas (each serves HTTP on its own port behind Serve's HAProxy or proxy).
    ingress_replicas: int = Field(default=1, ge=1, le=64)
    # At most this many ingress (and release server) replicas on one Ray node: 1 spreads them
    # over a cluster's nodes, so losing a node loses one replica, not all (None: Serve packs).
    max_replicas_per_node: int | None = Field(default=None, ge=1, le=64)
    # One log line per request costs CPU on the hot path; metrics count every request anyway.
    access_log: bool = False
    # Sha256 of every slot file at load; off only for quick local experiments on huge slots.
    verify_slot: bool = True
    # How often a retriever tails the slot's live log (upserts/deletes from a writer process).
    log_refresh_s: float = Field(default=1.0, ge=0, le=3600)
    # What /v1/search uses when a request names none: hybrid had the best precision on typed
    # queries (benchmarks.typed_queries); a request may pick ebr or term itself.
    retrieval: Retrieval = "hybrid"
    # The relevance page may save judgments (judgments/<set>.json in the workspace); off for a
    # server whose workspace must not change from a public route.
    judgments: bool = True
    # Used by ``serving.app.main`` and tests; with a config YAML the application's own
    # ``route_prefix`` key decides (Serve sets the prefix at deploy, not inside the graph).
    route_prefix: str = Field(default="/", pattern=r"^/")
    # How often the ingress looks for a changed releases/state.json (admin calls reload at once).
    state_poll_s: float = Field(default=0.5, gt=0, le=60)
    # Admin routes need "Authorization: Bearer <token>": the token is read at start from the
    # environment variable admin_token_env, else from admin_token_file; with neither, admin
    # routes answer 403. The token itself never travels in the app's arguments.
    admin_token_env: str = Field(default="EBR_ADMIN_TOKEN", pattern=r"^[A-Z_][A-Z0-9_]*$")
    admin_token_file: str | None = None
    # Backpressure: requests in flight in one ingress replica beyond max_inflight get a 503
    # with Retry-After at once; Serve queues at most ingress_max_queued_requests more.
    max_inflight: int = Field(default=8, ge=1, le=10_000)
    # A latency bound on top (None: off): a search or feed is shed when the ones in flight
    # ahead of it would keep it waiting longer than this, by the release work's measured
    # time (``serving.metrics.Admission``), so accepted requests stay fast under overload
    # whatever a request costs. Off by default: a busy machine's slow answers would shed
    # short bursts that max_inflight lets through.
    queue_budget_ms: float | None = Field(default=None, gt=0, le=60_000)
    ingress_max_ongoing_requests: int = Field(default=64, ge=1, le=10_000)
    ingress_max_queued_requests: int = Field(default=64, ge=-1, le=100_000)
    backend_max_ongoing_requests: int = Field(default=8, ge=1, le=10_000)
