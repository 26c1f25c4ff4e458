"""The Feast adapter on a real temp repo: publish, online reads, push, registry contents.

One workspace is published once per module (import + apply + materialize cost a few seconds);
the tests read it. The Redis test runs only where redis-server and the redis client exist.

Run: ``pytest -q tests/pipelines/test_feast_store.py``
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ebr.net import free_port
from feature_repo import repo as feast_repo
from feature_repo import store as feast_store

pytestmark = pytest.mark.slow  # the real stack (Flyte, Beam, Feast) end to end

N_JOBS, N_MEMBERS, DIM = 30, 10, 8
UNKNOWN_ID = 10_000


def _embeddings(key: str, n: int, seed: int, version: str = "v1") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # towers emit unit vectors
    return pd.DataFrame(
        {
            key: np.arange(1, n + 1, dtype=np.int64),
            "embedding": list(vectors),
            "model_version": version,
            "event_timestamp": pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=5),
        }
    )


def _profiles(n: int) -> pd.DataFrame:
    ids = np.arange(1, n + 1, dtype=np.int64)
    return pd.DataFrame(
        {
            "member_id": ids,
            "headline": [f"Senior data engineer {i}" for i in ids],
            "skills": [[f"skill-{i}", "python", "sql"][: 1 + i % 3] for i in ids],
            "seniority": "senior",
            "city": "Berlin",
            "country": "DE",
            "lat": 52.52 + ids / 100.0,
            "lon": 13.40,
            "open_to_remote": ids % 2 == 0,
            "max_commute_km": 30.0,
            "preferred_employment_type": "full_time",
        }
    )


def _make_workspace(root: Path) -> dict[str, pd.DataFrame]:
    """Write the upstream contract layout: embeddings/v1/{jobs,members}.parquet, data/members."""
    tables = {
        "jobs": _embeddings("job_id", N_JOBS, seed=1),
        "members": _embeddings("member_id", N_MEMBERS, seed=2),
        "profiles": _profiles(N_MEMBERS),
    }
    (root / "embeddings" / "v1").mkdir(parents=True)
    (root / "data").mkdir()
    tables["jobs"].to_parquet(root / "embeddings" / "v1" / "jobs.parquet")
    tables["members"].to_parquet(root / "embeddings" / "v1" / "members.parquet")
    tables["profiles"].to_parquet(root / "data" / "members.parquet")
    return tables


def _add_version(root: Path, version: str) -> pd.DataFrame:
    """embeddings/<version>/ of another model (no model.json: no member-interest lineage)."""
    (root / "embeddings" / version).mkdir()
    jobs = _embeddings("job_id", N_JOBS, seed=3, version=version)
    jobs.to_parquet(root / "embeddings" / version / "jobs.parquet")
    members = _embeddings("member_id", N_MEMBERS, seed=4, version=version)
    members.to_parquet(root / "embeddings" / version / "members.parquet")
    return jobs


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("workspace")
    tables = _make_workspace(root)
    report = feast_store.publish(root, "v1")
    return {"root": root, "tables": tables, "report": report}


@pytest.fixture(scope="module")
def store(published: dict[str, Any]) -> Any:
    return feast_store.open_store(published["root"] / "feature_repo")


def test_publish_reports_counts_and_views(published: dict[str, Any]) -> None:
    report = published["report"]
    assert (report["jobs"], report["members"], report["profiles"]) == (N_JOBS, N_MEMBERS, N_MEMBERS)
    assert report["dim"] == DIM
    assert report["versions_served"] == ["v1"]
    repo = published["root"] / "feature_repo"
    for name in ("job_embeddings_v1", "member_embeddings_v1", "member_profiles"):
        assert (repo / "data" / f"{name}.parquet").is_file()
    # Only definitions travel to the workspace; the adapter itself stays in the code tree.
    assert not (repo / "store.py").exists() and not (repo / "repo.py").exists()


def test_workspace_definitions_are_the_template_and_a_versions_list(
    published: dict[str, Any],
) -> None:
    repo = published["root"] / "feature_repo"
    for name in feast_repo.DEFINITION_FILES:
        assert (repo / name).read_bytes() == (feast_repo.TEMPLATE_DIR / name).read_bytes(), name
    names = (repo / feast_repo.NAMES_FILE).read_bytes()
    assert names == (feast_repo.REPO_ROOT / "ebr" / "feast_names.py").read_bytes()
    listed = json.loads((repo / "versions.json").read_text())
    assert listed == {"versions": [{"version": "v1", "interest_version": None}]}


def test_the_versions_file_declares_the_views_of_each_version(tmp_path: Path) -> None:
    feast_repo.copy_definitions(feast_repo.TEMPLATE_DIR, tmp_path)
    versions = tmp_path / "versions.json"
    versions.write_text(
        json.dumps(
            {
                "versions": [
                    {"version": "v1", "interest_version": "v7"},
                    {"version": "v2", "interest_version": None},
                ]
            }
        )
    )
    defs = vars(feast_repo.load_definitions(tmp_path / "definitions.py"))
    assert {"job_embedding_v1", "member_embedding_push_v2", "member_interest_v7"} <= set(defs)
    interest = {name for name in defs if name.startswith("member_interest_")}
    assert interest == {
        "member_interest_v7",
        "member_interest_source_v7",
        "member_interest_push_v7",
    }
    request = {fv.name for fv in defs["request_features_v1"].feature_view_projections}
    assert request == {"member_embedding_v1", "member_profile", "member_interest_v7"}
    request = {fv.name for fv in defs["request_features_v2"].feature_view_projections}
    assert request == {"member_embedding_v2", "member_profile"}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (None, "versions.json not found"),
        ("{not json", "malformed"),
        ('{"versions": []}', "lists no versions"),
        ('{"versions": [{"version": "../v1", "interest_version": null}]}', "bad entry"),
        ('{"versions": [{"version": "v1", "interest_version": "latest"}]}', "bad entry"),
        ('{"versions": [{"version": "v1"}, {"version": "v1"}]}', "lists 'v1' twice"),
    ],
)
def test_a_missing_or_malformed_versions_file_fails_the_import_by_name(
    tmp_path: Path, text: str | None, error: str
) -> None:
    feast_repo.copy_definitions(feast_repo.TEMPLATE_DIR, tmp_path)
    if text is not None:
        (tmp_path / "versions.json").write_text(text)
    with pytest.raises((FileNotFoundError, ValueError), match=error):
        feast_repo.load_definitions(tmp_path / "definitions.py")


def test_job_and_member_embeddings_round_trip(published: dict[str, Any], store: Any) -> None:
    for kind, read in (
        ("jobs", feast_store.job_embeddings),
        ("members", feast_store.member_embeddings),
    ):
        table = published["tables"][kind]
        key = table.columns[0]
        ids = [int(i) for i in table[key]]
        got = read(store, ids, "v1")
        assert set(got) == set(ids)
        for i, expected in zip(ids, table["embedding"], strict=True):
            vec = got[i]
            assert vec is not None and vec.dtype == np.float32 and vec.shape == (DIM,)
            assert np.allclose(vec, expected), f"{kind} {i} differs"


def test_member_profiles_round_trip(published: dict[str, Any], store: Any) -> None:
    profiles = published["tables"]["profiles"]
    got = feast_store.member_profiles(store, [int(i) for i in profiles["member_id"]])
    for row in profiles.itertuples(index=False):
        profile = got[int(row.member_id)]
        assert profile is not None
        assert profile["skills"] == list(row.skills)
        assert all(isinstance(s, str) for s in profile["skills"])
        assert profile["headline"] == row.headline
        assert profile["open_to_remote"] is bool(row.open_to_remote)
        assert profile["lat"] == pytest.approx(row.lat)
        assert profile["preferred_employment_type"] == "full_time"


def test_unknown_ids_read_as_none(store: Any) -> None:
    assert feast_store.member_profiles(store, [UNKNOWN_ID, 1])[UNKNOWN_ID] is None
    assert feast_store.member_embeddings(store, [UNKNOWN_ID], "v1") == {UNKNOWN_ID: None}
    got = feast_store.job_embeddings(store, [1, UNKNOWN_ID], "v1")
    assert got[UNKNOWN_ID] is None and got[1] is not None
    assert feast_store.job_embeddings(store, [], "v1") == {}


def test_bad_version_is_rejected(published: dict[str, Any], store: Any) -> None:
    with pytest.raises(ValueError, match="version must match"):
        feast_store.job_embeddings(store, [1], "latest")
    with pytest.raises(ValueError, match="version must match"):
        feast_store.publish(published["root"], "1")


def test_registry_lists_views_services_and_push_sources(store: Any) -> None:
    views = {fv.name for fv in store.list_feature_views()}
    assert {"job_embedding_v1", "member_embedding_v1", "member_profile"} <= views
    sources = {ds.name for ds in store.list_data_sources()}
    assert {"job_embedding_push_v1", "member_embedding_push_v1"} <= sources
    services = {fs.name for fs in store.list_feature_services()}
    assert {"request_features_v1", "item_features_v1"} <= services


def test_request_feature_service_serves_embedding_and_profile(store: Any) -> None:
    service = store.get_feature_service("request_features_v1")
    got = store.get_online_features(features=service, entity_rows=[{"member_id": 3}]).to_dict()
    assert len(got["embedding"][0]) == DIM and got["city"] == ["Berlin"]


def test_pushed_job_embedding_is_readable_at_once(store: Any) -> None:
    from feast.data_source import PushMode

    fresh = np.full(DIM, 0.5, dtype=np.float32)
    row = pd.DataFrame(
        {
            "job_id": [N_JOBS + 1],
            "embedding": [fresh],
            "model_version": ["v1"],
            "event_timestamp": [pd.Timestamp.now(tz="UTC")],
        }
    )
    store.push("job_embedding_push_v1", row, to=PushMode.ONLINE)
    got = feast_store.job_embeddings(store, [N_JOBS + 1], "v1")[N_JOBS + 1]
    assert got is not None and np.allclose(got, fresh)


def test_historical_features_resolve_relative_paths(
    published: dict[str, Any], store: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # FileSource paths are relative to the repo; the process may run from anywhere.
    monkeypatch.chdir(tmp_path)
    entities = pd.DataFrame({"job_id": [1, 2], "event_timestamp": pd.Timestamp.now(tz="UTC")})
    df = store.get_historical_features(
        entity_df=entities, features=["job_embedding_v1:embedding"]
    ).to_df()
    expected = published["tables"]["jobs"].set_index("job_id")["embedding"]
    for job_id, vec in zip(df["job_id"], df["embedding"], strict=True):
        assert np.allclose(vec, expected[job_id])


def test_second_publish_is_idempotent(published: dict[str, Any]) -> None:
    # Runs last among the shared-repo tests (pytest keeps file order): it re-materializes.
    report = feast_store.publish(published["root"], "v1")
    assert report["versions_served"] == ["v1"]
    assert not [c for c in report["apply_changes"] if c.startswith(("Created", "Deleted"))]
    again = feast_store.open_store(published["root"] / "feature_repo")
    jobs = published["tables"]["jobs"]
    got = feast_store.job_embeddings(again, [1, N_JOBS], "v1")
    assert np.allclose(got[1], jobs["embedding"].iloc[0])
    assert np.allclose(got[N_JOBS], jobs["embedding"].iloc[-1])


def test_a_new_version_is_added_to_the_versions_served(tmp_path: Path) -> None:
    """Publishing v2 keeps v1 served (both listed in versions.json, both readable); a repo
    published before versions.json existed keeps the versions its data/ holds."""
    tables = _make_workspace(tmp_path)
    feast_store.publish(tmp_path, "v1")
    (tmp_path / "feature_repo" / "versions.json").unlink()  # as an older publish left it
    jobs_v2 = _add_version(tmp_path, "v2")
    report = feast_store.publish(tmp_path, "v2")
    assert report["versions_served"] == ["v1", "v2"]
    assert not [c for c in report["apply_changes"] if c.startswith("Deleted")]
    listed = json.loads((tmp_path / "feature_repo" / "versions.json").read_text())
    assert [e["version"] for e in listed["versions"]] == ["v1", "v2"]
    store = feast_store.open_store(tmp_path / "feature_repo")
    for version, jobs in (("v1", tables["jobs"]), ("v2", jobs_v2)):
        got = feast_store.job_embeddings(store, [1], version)[1]
        assert got is not None and np.allclose(got, jobs["embedding"].iloc[0]), version


def test_publish_rejects_wrong_model_version(tmp_path: Path) -> None:
    _make_workspace(tmp_path)
    _embeddings("job_id", 3, seed=0, version="v2").to_parquet(
        tmp_path / "embeddings" / "v1" / "jobs.parquet"
    )
    with pytest.raises(ValueError, match="model_version"):
        feast_store.publish(tmp_path, "v1")


def test_publish_refuses_bad_rows_and_publishes_the_rest(tmp_path: Path) -> None:
    """Bad profiles and embedding rows are not published and are reported; a bad row never
    fails the publish of the others."""
    import json

    tables = _make_workspace(tmp_path)
    profiles = tables["profiles"].copy()
    profiles.loc[profiles["member_id"] == 2, "lat"] = 200.0
    profiles.loc[profiles["member_id"] == 3, "max_commute_km"] = -1.0
    profiles.loc[profiles["member_id"] == 4, "lon"] = np.nan  # lat without lon
    profiles.loc[profiles["member_id"] == 5, ["lat", "lon"]] = np.nan  # unknown: valid
    profiles.to_parquet(tmp_path / "data" / "members.parquet")
    jobs = tables["jobs"].copy()
    jobs.at[4, "embedding"] = np.full(DIM, np.nan, dtype=np.float32)  # job 5
    jobs.at[5, "embedding"] = np.array([np.inf, *[0.0] * (DIM - 1)], dtype=np.float32)  # job 6
    jobs.at[6, "embedding"] = np.ones(DIM + 1, dtype=np.float32)  # job 7: another width
    jobs.to_parquet(tmp_path / "embeddings" / "v1" / "jobs.parquet")
    members = tables["members"].copy()
    members.at[7, "embedding"] = None  # member 8
    members.to_parquet(tmp_path / "embeddings" / "v1" / "members.parquet")

    report = feast_store.publish(tmp_path, "v1")
    assert report["refused"] == {"jobs": 3, "members": 1, "profiles": 3}
    assert (report["jobs"], report["members"], report["profiles"]) == (
        N_JOBS - 3,
        N_MEMBERS - 1,
        N_MEMBERS - 3,
    )
    dead = [json.loads(line) for line in Path(report["dead_letter_path"]).read_text().splitlines()]
    assert report["refused_examples"] == dead[: feast_store.REFUSED_EXAMPLES]
    got = {(d["table"], d.get("job_id", d.get("member_id")), d["field"]) for d in dead}
    assert got == {
        ("jobs", 5, "embedding"),
        ("jobs", 6, "embedding"),
        ("jobs", 7, "embedding"),
        ("members", 8, "embedding"),
        ("profiles", 2, "lat"),
        ("profiles", 3, "max_commute_km"),
        ("profiles", 4, "lon"),
    }

    store = feast_store.open_store(tmp_path / "feature_repo")
    read = feast_store.member_profiles(store, list(range(1, N_MEMBERS + 1)))
    assert [m for m, p in read.items() if p is None] == [2, 3, 4]
    assert read[5] is not None and read[5]["lat"] is None  # unknown location, published
    vecs = feast_store.job_embeddings(store, list(range(1, N_JOBS + 1)), "v1")
    assert [j for j, v in vecs.items() if v is None] == [5, 6, 7]
    assert all(np.isfinite(v).all() and v.shape == (DIM,) for v in vecs.values() if v is not None)
    assert feast_store.member_embeddings(store, [8, 9], "v1")[8] is None


def test_profile_check_refuses_values_no_parquet_column_of_the_right_type_holds() -> None:
    """A headline that is a number (a mixed column of an upstream export) and its kind."""
    from datetime import UTC, datetime

    profiles = _profiles(4).astype({"headline": object, "max_commute_km": object})
    profiles.at[0, "headline"] = 42
    profiles.at[1, "max_commute_km"] = "30 km"
    profiles.at[2, "skills"] = "python, sql"
    good, refused = feast_store.check_profiles(profiles, datetime.now(UTC))
    assert [(r.id, r.field) for r in refused] == [
        (1, "headline"),
        (2, "max_commute_km"),
        (3, "skills"),
    ]
    assert list(good["member_id"]) == [4] and good["event_timestamp"].notna().all()


@pytest.fixture
def redis_url() -> Iterator[str]:
    pytest.importorskip("redis", reason="the redis client (feast[redis]) is not installed")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly"]
        + ["no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_redis_config_round_trip(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_CONNECTION_STRING", redis_url)
    tables = _make_workspace(tmp_path)
    report = feast_store.publish(tmp_path, "v1", config_name="feature_store.redis.yaml")
    assert report["jobs"] == N_JOBS
    store = feast_store.open_store(tmp_path / "feature_repo", "feature_store.redis.yaml")
    assert store.config.online_store.type == "redis"
    got = feast_store.member_embeddings(store, [1, UNKNOWN_ID], "v1")
    assert np.allclose(got[1], tables["members"]["embedding"].iloc[0])
    assert got[UNKNOWN_ID] is None


def test_feature_names_are_the_ones_the_definitions_declare(tmp_path: Path) -> None:
    """``ebr.versions.feature_names`` (what a release records) names exactly the feature
    services and views ``definitions.py`` declares (it runs under ``feast apply`` without ebr,
    reading the copy of ``ebr/feast_names.py`` beside it: the names are built once)."""
    import importlib.util

    from ebr.versions import feature_names

    feast_repo.copy_definitions(feast_repo.TEMPLATE_DIR, tmp_path)
    listed = [
        {"version": "v3", "interest_version": "v2"},
        {"version": "v4", "interest_version": None},
    ]
    (tmp_path / "versions.json").write_text(json.dumps({"versions": listed}))
    spec = importlib.util.spec_from_file_location("definitions_copy", tmp_path / "definitions.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for entry in listed:
        names = feature_names(entry["version"], entry["interest_version"])
        objects = module.embedding_views(entry["version"], entry["interest_version"])
        services = [objects[names.request_service], objects[names.item_service]]
        read = {p.name for service in services for p in service.feature_view_projections}
        assert read == set(names.views)


def test_redis_cluster_is_selected_by_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EBR_FEAST_CONFIG=feature_store.redis_cluster.yaml makes every reader and writer that
    names no config (publish, open_store) use a 3-node Redis Cluster: what is published is
    read back, keys spread over the nodes, the sqlite store is never written, and readers
    keep opening the cluster without the variable (the workspace records its store)."""
    from feature_repo.redis_cluster import RedisCluster

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")  # make sysdeps installs it
    with RedisCluster(tmp_path / "cluster") as cluster:
        monkeypatch.setenv("REDIS_CLUSTER_NODES", cluster.nodes)
        monkeypatch.setenv("EBR_FEAST_CONFIG", "feature_store.redis_cluster.yaml")
        tables = _make_workspace(tmp_path / "ws")
        report = feast_store.publish(tmp_path / "ws", "v1")
        assert report["jobs"] == N_JOBS and report["config_name"].endswith("cluster.yaml")
        store = feast_store.open_store(tmp_path / "ws" / "feature_repo")
        assert store.config.online_store.redis_type == "redis_cluster"
        got = feast_store.member_embeddings(store, [1, UNKNOWN_ID], "v1")
        assert np.allclose(got[1], tables["members"]["embedding"].iloc[0])
        assert got[UNKNOWN_ID] is None
        jobs = feast_store.job_embeddings(store, [int(j) for j in tables["jobs"]["job_id"]], "v1")
        assert all(v is not None for v in jobs.values()) and len(jobs) == N_JOBS
        import redis

        keys = [redis.Redis(port=p).dbsize() for p in cluster.ports]
        assert sum(k > 0 for k in keys) >= 2, keys  # hash slots spread the entities
        assert not (tmp_path / "ws" / "feature_repo" / "data" / "online.db").exists()
        monkeypatch.delenv("EBR_FEAST_CONFIG")  # the workspace remembers its online store
        again = feast_store.open_store(tmp_path / "ws" / "feature_repo")
        assert again.config.online_store.redis_type == "redis_cluster"
        monkeypatch.setenv("EBR_FEAST_CONFIG", "feature_store.nope.yaml")
        with pytest.raises(ValueError, match="EBR_FEAST_CONFIG"):
            feast_store.open_store(tmp_path / "ws" / "feature_repo")
