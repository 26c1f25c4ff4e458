"""Frozen configuration for every stage of the data path.

Each pipeline takes exactly one of these, passed explicitly; nothing reads the environment here.
Values are validated in ``__post_init__`` so a bad setting fails at the boundary with its name.

Size: every frozen config of the data path and the ``Workspace`` layout, kept together so one
file says what each run reads and how it is checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

INDEX_KINDS = ("flat", "ivf", "ivfpq", "hnsw", "exact")  # exact: torch on a GPU (query.device)
SCHEMAS = ("jobs", "interest", "movielens")
REQUEST_INPUTS = ("composite", "query")
TEXT_ENCODERS = ("hashed", "hashed+minilm")
# Engagement tasks and the impression outcomes that are positives of each: every engaged
# impression was clicked first (the generator's funnel), saves and applies are terminal.
TASKS = ("apply", "save", "click")
TASK_OUTCOMES = {"apply": ("apply",), "save": ("save",), "click": ("click", "save", "apply")}


TUNE_ON = ("requests", "held_out", "jittered")  # what a slot's recall gate measures on
# What a run does with the slot it built (``ebr.release``): nothing, record a gated candidate
# release, or record one and make it the live release.
RELEASE_MODES = ("none", "candidate", "promote")
VERSION_RE = re.compile(r"^v[0-9]{1,6}$")


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def check_version(version: str) -> str:
    """Embedding versions name Feast tables and slots: 'v1', 'v2', ..."""
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise ValueError(
            f"version must match {VERSION_RE.pattern} (model versions look like 'v1', 'v2', "
            f"...); got {version!r}"
        )
    return version


WORLDS = ("intent", "profile")  # DataConfig.world


@dataclass(frozen=True)
class DataConfig:
    """Size and seed of the synthetic job marketplace."""

    n_jobs: int = 5_000  # the size parameter: members and impressions scale from it
    seed: int = 7  # same seed -> byte-identical tables
    members_per_job: float = 0.2  # marketplaces have more jobs than active searchers per day
    sessions_per_member: float = 12.0  # search / JYMBII sessions per member over the log window
    shown_per_session: int = 10  # impressions per session (one results page)
    search_fraction: float = 0.7  # share of sessions with a query (the rest are JYMBII feeds)
    n_cities: int = 60  # real cities (GeoNames) jobs and members live in
    n_companies: int = 0  # 0 -> derived from n_jobs
    days: int = 14  # impression log spans this many days (time split uses the last ones)
    # intent: a search session's query names what the member looks for today (their profile
    # target, or an occupation they explore) and engagement depends on it; profile: the
    # generator before issue 21 (every query from the profile target, engagement blind to it)
    world: str = "intent"
    explore_share: float = 0.35  # intent world: search sessions not about the profile target

    def __post_init__(self) -> None:
        _require(self.n_jobs >= 50, f"n_jobs must be >= 50, got {self.n_jobs}")
        _require(self.n_jobs <= 5_000_000, f"n_jobs must be <= 5,000,000, got {self.n_jobs}")
        _require(
            0 < self.members_per_job <= 10, f"members_per_job out of range: {self.members_per_job}"
        )
        _require(self.sessions_per_member > 0, "sessions_per_member must be > 0")
        _require(1 <= self.shown_per_session <= 100, "shown_per_session must be in [1, 100]")
        _require(0 <= self.search_fraction <= 1, "search_fraction must be in [0, 1]")
        _require(2 <= self.n_cities <= 1000, f"n_cities must be in [2, 1000], got {self.n_cities}")
        _require(self.days >= 2, "days must be >= 2 (a time split needs a later day)")
        _require(self.world in WORLDS, f"world must be one of {WORLDS}, got {self.world!r}")
        _require(0 <= self.explore_share <= 1, "explore_share must be in [0, 1]")

    @property
    def n_members(self) -> int:
        return max(20, int(self.n_jobs * self.members_per_job))


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the two-tower model (saved inside the artifact, so it rebuilds identically)."""

    dim: int = 64  # output embedding size (cosine space)
    hash_buckets: int = 2**17  # hashed word uni+bigrams; ~131k buckets keeps collisions rare
    token_dim: int = 64  # width of the text embedding bags
    cat_buckets: int = 2**14  # hashed categorical values (company, city, industry, ...)
    cat_dim: int = 16  # width of each categorical embedding
    hidden: int = 128  # MLP width on top of the concatenated features
    max_tokens: int = 96  # fixed token slots per text input (padded with 0) so batches stack
    schema: str = "jobs"  # which featurizers feed the towers: jobs | interest | movielens
    request_inputs: str = "composite"  # composite (query + member + interest + context) |
    # query (query text only: the baseline the composite tower must beat)
    interest_dim: int = 0  # width of the looked-up member-interest embedding; 0 = not an input
    tasks: tuple[str, ...] = ("apply", "save", "click")  # one request-tower head per task
    serve_task: str = "apply"  # the head batch inference and serving embed requests with
    text_encoder: str = "hashed"  # hashed | hashed+minilm: adds frozen all-MiniLM-L6-v2
    # sentence embeddings of the query and the job title (ebr.model.sentence)
    subwords: bool = True  # titles, queries and headlines also hash their character trigrams
    # (misspellings and word forms share most of them)
    lexical: bool = True  # both towers add one shared projection of their pooled query / title
    # text to the output (a tied term-matching path: see ebr.model.towers)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))  # JSON round trips give lists
        _require(self.schema in SCHEMAS, f"schema must be one of {SCHEMAS}, got {self.schema!r}")
        _require(
            self.request_inputs in REQUEST_INPUTS,
            f"request_inputs must be one of {REQUEST_INPUTS}, got {self.request_inputs!r}",
        )
        _require(0 <= self.interest_dim <= 1024, "interest_dim must be in [0, 1024]")
        _require(
            self.text_encoder in TEXT_ENCODERS,
            f"text_encoder must be one of {TEXT_ENCODERS}, got {self.text_encoder!r}",
        )
        unknown = sorted(set(self.tasks) - set(TASKS))
        _require(not unknown, f"tasks must be among {TASKS}, got {unknown}")
        _require(len(set(self.tasks)) == len(self.tasks), f"tasks repeat: {self.tasks}")
        _require(
            not self.tasks or self.serve_task in self.tasks,
            f"serve_task {self.serve_task!r} must be one of tasks {self.tasks}",
        )
        _require(8 <= self.dim <= 1024, f"dim must be in [8, 1024], got {self.dim}")
        _require(self.hash_buckets >= 1024, "hash_buckets must be >= 1024")
        _require(self.cat_buckets >= 64, "cat_buckets must be >= 64")
        _require(self.max_tokens >= 8, "max_tokens must be >= 8")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings for the in-batch softmax two-tower training."""

    epochs: int = 4
    batch_size: int = 512  # in-batch negatives: larger batches -> harder softmax
    lr: float = 3e-3
    temperature: float = 0.1  # cosine logits / temperature (0.1 beat 0.05 on held-out recall)
    seed: int = 13
    torch_threads: int = 2  # the machines have 2 cores
    eval_days: int = 2  # last days of the impression log are held out
    member_dropout: float = 0.2  # share of search pairs trained without the member, so
    # anonymous searches (query only) are in the training distribution too
    context_dropout: float = 0.2  # share of pairs trained without the request time, so the
    # batch member embeddings (JYMBII; embedded with no request time) are in distribution
    task_weights: tuple[float, ...] = ()  # loss weight per ModelConfig.tasks entry; () = all 1
    logq: bool = True  # subtract log(sampling probability) from in-batch logits (popular jobs)
    hard_negatives: bool = True  # add one heuristic hard negative per pair to the softmax:
    # a job impressed in the same session but not engaged, or the same title in another city
    catalogue_pairs: float = 0.5  # catalogue-derived (typed text -> job) pairs per log pair,
    # anonymous and for every task: they teach every occupation's words, not only the log's.
    # 20k jobs (benchmarks.typed_queries), with the lexical path and trigrams: typed EBR
    # p@10 / log search / JYMBII recall@100 at 0.2: 0.742 / 0.727 / 0.709; 0.5: 0.780 /
    # 0.722 / 0.708; 0.7: 0.783 / 0.725 / 0.692; 1.0: 0.794 / 0.715 / 0.674 (JYMBII < 0.677);
    # 0.5 with training-half ESCO synonyms as a fifth kind: 0.806 / 0.727 / 0.701

    def __post_init__(self) -> None:
        object.__setattr__(self, "task_weights", tuple(float(w) for w in self.task_weights))
        _require(all(w >= 0 for w in self.task_weights), "task_weights must be >= 0")
        _require(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _require(self.batch_size >= 2, "batch_size must be >= 2 (in-batch negatives)")
        _require(self.lr > 0, "lr must be > 0")
        _require(
            0 < self.temperature <= 1, f"temperature must be in (0, 1], got {self.temperature}"
        )
        _require(self.eval_days >= 1, "eval_days must be >= 1")
        _require(0 <= self.member_dropout < 1, "member_dropout must be in [0, 1)")
        _require(0 <= self.context_dropout < 1, "context_dropout must be in [0, 1)")
        _require(0 <= self.catalogue_pairs <= 10, "catalogue_pairs must be in [0, 10]")


@dataclass(frozen=True)
class IndexConfig:
    """Which FAISS index a slot holds, how it is searched, and the recall it must reach."""

    kind: str = "ivfpq"  # flat | ivf | ivfpq | hnsw
    nlist: int = 0  # IVF cells; 0 -> about 4 * sqrt(n)
    nprobe: int = 16  # cells visited per query (ivf, ivfpq)
    pq_m: int = 0  # PQ sub-quantizers (must divide dim); 0 -> 4 bits per dimension (d for
    # 4-bit codes): on 1M x 64 job embeddings PQ32x4fs topped out at recall@10 0.70 with 16x
    # refine (0.91 with 64x), PQ64x4fs at 0.98 (benchmarks/ann_curves.py)
    pq_nbits: int = 4  # 4 = fast-scan PQ (SIMD lookups; fastest with refine), 8 = classic PQ
    refine: int = 4  # IVFPQ re-ranks refine * k candidates with exact inner products
    hnsw_m: int = 32  # HNSW graph degree (2 * hnsw_m links on the base layer)
    ef_construction: int = 80  # HNSW build beam: higher -> better graph, slower build
    ef_search: int = 64  # HNSW search beam (hnsw)
    target_recall: float = 0.95  # recall@10 vs exact a slot must reach (the tuner's gate)
    recall_queries: int = 1000  # queries the gate tunes on, and as many its claim is measured on
    # What the gate measures recall on: "requests" (the version's request-tower member
    # embeddings, i.e. JYMBII requests; held-out rows when a version has too few),
    # "held_out" (catalogue rows searched leave-one-out, as queries not in the catalogue) or
    # "jittered" (jittered catalogue rows: easier, so it can pass settings real queries miss:
    # GloVe-400k, 0.950 claimed on jittered rows, 0.942 served on held-out words)
    tune_on: str = "requests"
    seed: int = 3

    def __post_init__(self) -> None:
        _require(
            self.kind in INDEX_KINDS, f"index kind must be one of {INDEX_KINDS}, got {self.kind!r}"
        )
        _require(self.nlist >= 0, "nlist must be >= 0")
        _require(self.nprobe >= 1, "nprobe must be >= 1")
        _require(self.pq_m >= 0, f"pq_m must be >= 0 (0 = automatic), got {self.pq_m}")
        _require(self.pq_nbits in (4, 8), f"pq_nbits must be 4 or 8, got {self.pq_nbits}")
        _require(self.refine >= 1, "refine must be >= 1")
        _require(self.tune_on in TUNE_ON, f"tune_on must be one of {TUNE_ON}, got {self.tune_on!r}")
        _require(2 <= self.hnsw_m <= 256, f"hnsw_m must be in [2, 256], got {self.hnsw_m}")
        _require(
            self.ef_construction >= self.hnsw_m,
            # A build beam narrower than the degree cannot fill a node's links with good ones.
            f"ef_construction must be >= hnsw_m ({self.hnsw_m}), got {self.ef_construction}",
        )
        _require(self.ef_search >= 1, f"ef_search must be >= 1, got {self.ef_search}")
        _require(
            0 < self.target_recall <= 1,
            f"target_recall must be in (0, 1], got {self.target_recall}",
        )


@dataclass(frozen=True)
class RankerConfig:
    """Training a second-stage ranker (``ebr.rank.train``): LightGBM LambdaMART over the
    candidates a release retrieves for the impression log's sessions. The shape was chosen on
    var/demo2 on a validation split of the fitting window (NDCG@10 ratio to the retrieval
    order, all sessions): 100 x 15 leaves 1.323; 31 leaves 1.314; 50 / 200 trees 1.317 /
    1.328; position regulariser 0 / 10: 1.315 / 1.323. 50 trees: half the scoring time of
    100 for -0.5% NDCG (the ranking stage's budget is 3 ms for 200 candidates)."""

    depth: int = 200  # candidates retrieved per request, then ranked (serving's default)
    train_sessions: int = 6000  # sessions replayed to fit on (a seeded sample of the window)
    eval_sessions: int = 2000  # later sessions replayed for the NDCG gate and report
    trees: int = 50  # 50 x 15 leaves score 200 candidates in ~0.25 ms on one core
    num_leaves: int = 15
    learning_rate: float = 0.05
    min_data_in_leaf: int = 50
    # Position bias: LightGBM's position-debiased lambdarank (a per-position bias term learned
    # with the model from the logged positions, not used to score); at 0 the bias term may
    # absorb relevance (the incumbent ordered its pages by utility).
    position_bias_regularization: float = 1.0
    seed: int = 7

    def __post_init__(self) -> None:
        for name in ("depth", "train_sessions", "eval_sessions", "trees", "num_leaves",
                     "min_data_in_leaf"):  # fmt: skip
            value = getattr(self, name)
            _require(isinstance(value, int) and value >= 1, f"{name} must be >= 1, got {value}")
        _require(self.depth <= 2000, f"depth must be <= 2000, got {self.depth}")
        _require(self.num_leaves >= 2, f"num_leaves must be >= 2, got {self.num_leaves}")
        _require(0 < self.learning_rate <= 1, f"learning_rate must be in (0, 1], got "
                 f"{self.learning_rate}")  # fmt: skip
        _require(self.position_bias_regularization >= 0,
                 "position_bias_regularization must be >= 0, got "
                 f"{self.position_bias_regularization}")  # fmt: skip


@dataclass(frozen=True)
class GateConfig:
    """What a release must show before it may serve (``ebr.release.gates``)."""

    min_coverage: float = 1.0  # share of active jobs the release's slot must hold
    min_recall_at_10: float = 0.0  # the slot's tuned recall@10 floor; 0 -> its own target_recall
    # Held-out EBR recall@100 (through the served index) may trail the live release's by at
    # most this much; None -> no quality gate (a release without an evaluation report passes).
    quality_margin: float | None = None
    # A pinned ranker's held-out NDCG@10 must be at least this times the retrieval order's.
    min_ranker_ndcg_ratio: float = 1.0

    def __post_init__(self) -> None:
        _require(
            0.0 <= self.min_coverage <= 1.0,
            f"min_coverage must be in [0, 1], got {self.min_coverage}",
        )
        _require(
            0.0 <= self.min_recall_at_10 <= 1.0,
            f"min_recall_at_10 must be in [0, 1], got {self.min_recall_at_10}",
        )
        _require(
            self.min_ranker_ndcg_ratio >= 0,
            f"min_ranker_ndcg_ratio must be >= 0, got {self.min_ranker_ndcg_ratio}",
        )
        _require(
            self.quality_margin is None or 0.0 <= self.quality_margin <= 1.0,
            f"quality_margin must be None or in [0, 1], got {self.quality_margin}",
        )


@dataclass(frozen=True)
class ReembedConfig:
    """Everything a re-embedding run reads: the ``reembed`` workflow's one input.

    ``version`` "" re-embeds the version of the live release when the run starts (an error
    before any release is live). ``release``: "candidate" records the new slot as a gated
    candidate release (``gates``) and leaves the live release alone (what the nightly schedule
    does); "promote" also makes it live; "none" records nothing (the slot serves nothing).
    ``history_holdout_days``: the member-interest history stops this many days before the
    log's end (the demo's evaluation days; 0 in production, where the log ends now).
    """

    workspace: str = "var/demo"
    version: str = ""
    batch_size: int = 256  # rows per Beam element (one forward pass each)
    history_holdout_days: int = 2
    index: IndexConfig = field(default_factory=IndexConfig)
    release: str = "candidate"
    gates: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        _require(bool(self.workspace), "workspace must be a path, got ''")
        if self.version:
            check_version(self.version)
        _require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _require(self.history_holdout_days >= 0, "history_holdout_days must be >= 0")
        _check_release_mode(self.release)


def _check_release_mode(mode: str) -> None:
    _require(mode in RELEASE_MODES, f"release must be one of {RELEASE_MODES}, got {mode!r}")


def _check_version_run(cfg: BuildConfig | ReleaseConfig) -> None:
    """The checks a run that builds one named version shares (build_platform, provision)."""
    _require(bool(cfg.workspace), "workspace must be a path, got ''")
    check_version(cfg.version)
    check_version(cfg.interest_version)
    _require(cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
    _require(cfg.history_holdout_days >= 0, "history_holdout_days must be >= 0")
    _check_release_mode(cfg.release)


@dataclass(frozen=True)
class BuildConfig:
    """Everything a full build reads: the ``build_platform`` workflow's one input (marketplace
    data, the member-interest and composite models, batch embedding, the index slot)."""

    workspace: str = "var/demo"
    version: str = "v1"
    interest_version: str = "v1"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=6))
    batch_size: int = 256
    history_holdout_days: int = 2
    index: IndexConfig = field(default_factory=IndexConfig)
    release: str = "promote"  # building a version on demand is the operator's release of it
    gates: GateConfig = field(default_factory=GateConfig)
    rank: bool = True  # train a second-stage ranker and pin it in the release
    ranker: RankerConfig = field(default_factory=RankerConfig)

    def __post_init__(self) -> None:
        _check_version_run(self)


@dataclass(frozen=True)
class ReleaseConfig:
    """The ``provision_release`` workflow's one input: release model ``version`` next to the
    ones serving (parallel Feast views and slot; live untouched unless ``release`` says
    "promote"). ``train_model``: train ``version`` first on the workspace's data, co-trained
    with member-interest ``interest_version`` (which must exist); otherwise models/<version>
    must exist already."""

    workspace: str = "var/demo"
    version: str = "v2"
    train_model: bool = False
    interest_version: str = "v1"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=6))
    batch_size: int = 256
    history_holdout_days: int = 2
    index: IndexConfig = field(default_factory=IndexConfig)
    release: str = "candidate"
    gates: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        _check_version_run(self)


@dataclass(frozen=True)
class Workspace:
    """Where one platform instance keeps its artifacts (a local folder by default).

    Layout::

        data/{jobs,members,impressions}.parquet    marketplace tables
        models/<version>/                          two-tower artifacts
        embeddings/<version>/{jobs,members}.parquet
        feature_repo/                              the Feast repo (definitions + data/)
        slots/<slot-name>/                         immutable index slots
        slots/aliases.json                         jobs@<version>: the newest slot built per
                                                   version (not what serves: state.json says)
        eval/<version>/eval_report.{json,png}      held-out evaluation of a version
        interest/models/<iv>/                      member-interest model (its own versions)
        interest/embeddings/<iv>/members.parquet   batch member-interest embeddings
        rankers/<version>/<ranker id>/             second-stage rankers (LightGBM) of a version
        releases/<id>/release.json                 immutable release records
        releases/state.json                        what is live: the release, experiment,
                                                   release states (serving reads only this)
        stream/catalog/{jobs,members}.parquet      streamed changes as of the last compaction
        stream/jobs/<name>.json                    handles of running streaming jobs
    """

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    @property
    def feature_repo(self) -> Path:
        return self.root / "feature_repo"

    @property
    def slots(self) -> Path:
        return self.root / "slots"

    @property
    def interest_models(self) -> Path:
        """Member-interest model artifacts: interest/models/<interest-version>/."""
        return self.root / "interest" / "models"

    @property
    def interest_embeddings(self) -> Path:
        """Batch member-interest embeddings: interest/embeddings/<interest-version>/."""
        return self.root / "interest" / "embeddings"

    @property
    def rankers(self) -> Path:
        """Second-stage rankers: rankers/<version>/<ranker id>/ (immutable, ``ebr.rank``)."""
        return self.root / "rankers"

    @property
    def releases(self) -> Path:
        """Release records (``releases/<id>/release.json``) and the serving state pointer
        (``releases/state.json``, the only mutable file there): ``ebr.release``."""
        return self.root / "releases"

    @property
    def stream(self) -> Path:
        """The streaming job's files (``ebr.stream``): its handles and catalogue snapshots."""
        return self.root / "stream"
