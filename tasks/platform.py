"""Flyte tasks: each is a thin call into one core or pipeline function.

Tasks exchange the workspace (its root, a path on shared storage: ``tasks`` turns it into a
``Workspace``) plus the path each stage produced, so Flyte orders them by data dependency and
caches nothing stale.
"""

from __future__ import annotations

from pathlib import Path

from flytekit import Resources, task

from ebr.config import DataConfig, IndexConfig, ModelConfig, RankerConfig, TrainConfig, Workspace
from ebr.fingerprint import code_version

# What the marketplace tables are a function of, besides the DataConfig input (Flyte keys the
# cache on the inputs too): the generator's code. Its bundled data (ESCO, GeoNames) comes from
# pinned packages.
GENERATOR_CODE = ("ebr.data", "ebr.config", "ebr.io", "ebr.text")


# Deterministic (same config + same code -> byte-identical tables), so cached; the version
# changes with the code, so an edited generator never serves stale tables from the cache.
# A cache hit skips the body: the tables must still be in the workspace (``ebr.steps.read_tables``
# says so when they are not; rerun with --overwrite-cache after deleting a workspace).
@task(
    requests=Resources(cpu="2", mem="4Gi"),
    retries=1,
    cache=True,
    cache_version=code_version(*GENERATOR_CODE),
)
def generate_marketplace(workspace: Workspace, data: DataConfig) -> str:
    """Write jobs/members/impressions Parquet tables; returns the data folder."""
    from ebr.data.marketplace import write_marketplace

    print(write_marketplace(data, workspace.data))
    return str(workspace.data)


@task(requests=Resources(cpu="2", mem="4Gi"))
def train_member_interest(
    workspace: Workspace, data_dir: str, interest_version: str, train: TrainConfig
) -> str:
    """Train the member-interest model; saves interest/models/<iv>, returns that folder."""
    from ebr.steps import train_member_interest as fit

    return str(fit(workspace, interest_version, train))


@task(requests=Resources(cpu="2", mem="4Gi"))
def train_two_tower(
    workspace: Workspace,
    data_dir: str,
    version: str,
    interest_dir: str,
    model: ModelConfig,
    train: TrainConfig,
) -> str:
    """Train the composite multi-task model on the impression log, reading the member-interest
    model at ``interest_dir`` (lineage saved in model.json); returns models/<version>.
    ``model.text_encoder``: "hashed" or "hashed+minilm" (adds frozen MiniLM query/title
    vectors)."""
    from ebr.steps import train_two_tower as train_model

    path, metrics = train_model(workspace, version, Path(interest_dir), model, train)
    print(metrics)
    return str(path)


@task(requests=Resources(cpu="2", mem="4Gi"), retries=1)
def embed_member_interest(
    workspace: Workspace, version: str, batch_size: int, history_holdout_days: int
) -> str:
    """Beam: refresh the batch member-interest embeddings of the interest version model
    ``version`` was co-trained with (history up to ``history_holdout_days`` before the log's
    end); returns their folder, or "" for a model without a member-interest input."""
    from pipelines.batch.embed import embed_interest_of

    out = embed_interest_of(workspace, version, batch_size, history_holdout_days)
    print(out)
    return "" if out is None else str(out["path"])


@task(requests=Resources(cpu="2", mem="4Gi"), retries=1)
def embed_catalog(workspace: Workspace, version: str, batch_size: int) -> str:
    """Beam batch inference over all jobs and members (members joined with the batch
    interest embeddings of the interest version ``version`` was co-trained with); returns the
    embeddings folder."""
    from pipelines.batch.embed import embed_catalog as embed

    out = embed(workspace, version, batch_size)
    print(out)
    return str(out["path"])


@task(requests=Resources(cpu="1", mem="2Gi"), retries=1)
def publish_features(workspace: Workspace, version: str) -> str:
    """feast apply + materialize the version's embedding tables; returns the feature repo."""
    from feature_repo.store import publish

    print(publish(workspace.root, version))
    return str(workspace.feature_repo)


@task(requests=Resources(cpu="1", mem="1Gi"))
def serving_version(workspace: Workspace, version: str) -> str:
    """``version``, or when it is "" the model version of the live release at run time (what
    a scheduled re-embedding must refresh, whichever release went live since it was set up)."""
    from ebr.release.record import release_version
    from ebr.release.state import read_state

    if version:
        return version
    live = read_state(workspace)["live"]
    if live is None:
        raise ValueError(f"no release is live in {workspace.root}: name the version to re-embed")
    return release_version(live)


@task(requests=Resources(cpu="2", mem="4Gi"))
def build_index_slot(workspace: Workspace, version: str, index: IndexConfig) -> str:
    """Build an immutable FAISS slot from the job embeddings (tuned to ``index.target_recall``)
    and point jobs@<version> at it (``ebr.release.slots.build_job_slot``); a release records
    it to serve it."""
    from ebr.release.slots import build_job_slot

    info = build_job_slot(workspace, version, index)
    print(info)
    return str(info["slot"])


@task(requests=Resources(cpu="2", mem="4Gi"), enable_deck=True)
def evaluate_model(workspace: Workspace, model_dir: str, version: str, slot: str) -> str:
    """EBR (exact, and through the served ANN ``slot``) vs BM25 / popularity / hybrid on the
    held-out days; JSON + PNG, shown as a Flyte Deck."""
    from flytekit import Deck

    from ebr.eval.report import evaluate_release, report_html, write_report
    from ebr.versions import eval_days, read_meta, version_paths

    days = eval_days(read_meta(Path(model_dir)))  # the days this model was trained without
    report = evaluate_release(workspace, Path(model_dir), workspace.slots / slot, days)
    json_path, png_path = write_report(report, version_paths(workspace, version).eval)
    Deck("Evaluation", report_html(report, png_path))
    return str(json_path)


@task(requests=Resources(cpu="2", mem="4Gi"))
def train_ranker(
    workspace: Workspace, version: str, slot: str, ranker: RankerConfig, enabled: bool
) -> str:
    """The second-stage ranker of ``version`` (``ebr.rank.train``: LambdaMART over what
    ``slot`` retrieves for the log's training sessions, judged on its held-out ones); returns
    its id ("" when not ``enabled``)."""
    if not enabled:
        return ""
    from ebr.rank.train import train_ranker as train

    path = train(workspace, version, ranker, slot)
    print((path / "ranker.json").read_text())
    return path.name
