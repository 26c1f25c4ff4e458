"""The streaming job end to end on a real Redis and the real Beam runner, over a copy of the
tiny platform: every kind of event reaches every sink, each kind of malformed event is
dead-lettered with its reason while the rest flow, the result equals a batch re-embed of the
final catalogue, a SIGKILL mid-stream loses and duplicates nothing, a Redis restart is
survived, and a release added while the job runs gets the writes from then on."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pytest

from ebr.config import IndexConfig, Workspace
from ebr.release.provision import provision
from ebr.release.slots import build_job_slot
from ebr.stream.catalog import overlay
from ebr.stream.events import FIELD, encode
from feature_repo.store import member_embeddings, member_interest, member_profiles, open_store
from pipelines.batch.embed import embed_catalog, embed_interest
from pipelines.streaming.broker import Broker, RedisServer
from pipelines.streaming.sinks import latest_catalog
from tests.pipelines.streaming import (
    StreamJob,
    acked,
    copy_workspace,
    job_record,
    live_jobs,
    live_version,
    now,
    profile_record,
    release_slot,
    stream_until_drained,
    wait_drained,
)

ATOL = 1e-5  # stream vs batch vectors: the same code on the same records


class Setup(NamedTuple):
    ws: Path  # a private copy of the tiny platform
    jobs: pd.DataFrame
    members: pd.DataFrame
    broker: Broker  # a producer on the test's own Redis
    url: str


@pytest.fixture
def setup(platform_ws: Path, tmp_path: Path, redis_server: RedisServer) -> Setup:
    ws = copy_workspace(platform_ws, tmp_path / "ws")
    jobs, members = tables(ws)
    return Setup(ws, jobs, members, Broker(redis_server.url, "producer"), redis_server.url)


def tables(ws: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(ws / "data" / "jobs.parquet"), pd.read_parquet(
        ws / "data" / "members.parquet"
    )


def malformed(jobs: pd.DataFrame) -> dict[str, tuple[dict[str, str], str]]:
    """name -> (stream entry, a phrase its dead letter's reason holds)."""
    t, first = now(), int(jobs["job_id"].iloc[0])
    good = job_record(jobs, first)
    return {
        "bad json": ({FIELD: "{not json"}, "not JSON"),
        "unknown kind": ({FIELD: json.dumps({"kind": "job_deleted", "id": 1})}, "kind must be"),
        "unknown job": (encode("job_updated", 99_999_999, t, good | {"job_id": 99_999_999}),
                        "unknown job"),
        "missing field": (encode("job_updated", first, t, {"job_id": first, "title": "x"}),
                          "record lacks"),
        "wrong type": (encode("job_updated", first, t, good | {"lat": "north"}), "record.lat"),
        "10 MB description": (encode("job_updated", first, t, good | {"description": "x" * 10**7}),
                              "byte limit"),
    }  # fmt: skip


def test_every_event_kind_reaches_every_sink_and_bad_events_are_dead_lettered(
    setup: Setup, platform_ws: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    ws, jobs, members, broker, _ = setup
    store = open_store(ws / "feature_repo")
    version = live_version(ws)
    [updated, closed], member = jobs["job_id"].iloc[[3, 4]].tolist(), int(members["member_id"][0])
    before = member_embeddings(store, [member], version)[member]
    t = now()
    bad = malformed(jobs)
    broker.produce(encode("job_posted", 9_000_001, t, job_record(jobs, updated) | {
        "job_id": 9_000_001, "title": "Underwater welder", "active": True}))  # fmt: skip
    broker.produce(bad["bad json"][0])
    broker.produce(encode("job_updated", updated, t, job_record(jobs, updated, title="Sommelier")))
    broker.produce(encode("job_closed", closed, t))
    for entry, _ in list(bad.values())[1:]:
        broker.produce(entry)
    profile = profile_record(members, member, headline="Marine biologist", skills=["diving"])
    broker.produce(encode("member_profile_updated", member, t, profile))
    # A late, older update never overwrites the newer one.
    stale = job_record(jobs, updated, title="Stale title")
    broker.produce(encode("job_updated", updated, t - timedelta(hours=1), stale))
    stream_until_drained(ws, broker.client, redis_server.url, tmp_path / "stream.log")

    served = live_jobs(release_slot(ws))
    assert served[9_000_001][1]["title"] == "Underwater welder"
    assert served[updated][1]["title"] == "Sommelier"
    assert closed not in served
    store = open_store(ws / "feature_repo")  # a fresh registry read
    assert member_profiles(store, [member])[member]["headline"] == "Marine biologist"
    original = open_store(platform_ws / "feature_repo")  # the copy has its own online store
    assert member_profiles(original, [member])[member]["headline"] != "Marine biologist"
    after = member_embeddings(store, [member], version)[member]
    assert after is not None and before is not None and not np.allclose(after, before)
    letters = {d["entry_id"]: d["reason"] for d in broker.dead_letters()}
    assert len(letters) == len(bad), letters
    for name, (_, phrase) in bad.items():
        assert any(phrase in r for r in letters.values()), (name, letters)


def test_stream_result_equals_a_batch_re_embed_of_the_final_catalogue(
    setup: Setup, platform_ws: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    ws, jobs, members, broker, _ = setup
    rng = np.random.default_rng(3)
    t = now()
    picked = rng.choice(jobs["job_id"].to_numpy(), 40, replace=False).tolist()
    for i, jid in enumerate(picked[:30]):
        rec = job_record(jobs, jid, title=f"Role {i}", remote=bool(i % 2))
        broker.produce(encode("job_updated", jid, t + timedelta(seconds=i), rec))
    for jid in picked[30:]:
        broker.produce(encode("job_closed", jid, t))
    for i in range(10):
        rec = job_record(jobs, picked[0], job_id=8_000_000 + i, title=f"Nurse {i}", active=True)
        broker.produce(encode("job_posted", 8_000_000 + i, t, rec))
    for mid in members["member_id"].iloc[:15].tolist():
        rec = profile_record(members, mid, headline=f"Welder {mid}", seniority="senior")
        broker.produce(encode("member_profile_updated", mid, t, rec))
    log = tmp_path / "stream.log"
    stream_until_drained(ws, broker.client, redis_server.url, log, "--max-events", "16")

    # The batch path over the final catalogue, in a second copy of the workspace.
    final = latest_catalog(broker.client)
    batch_ws = copy_workspace(platform_ws, tmp_path / "batch")
    final_jobs = overlay(jobs, "job_id", final["job"])
    final_jobs.to_parquet(batch_ws / "data" / "jobs.parquet", index=False)
    overlay(members, "member_id", final["member"]).to_parquet(
        batch_ws / "data" / "members.parquet", index=False
    )
    w = Workspace(batch_ws)
    version = live_version(w.root)
    meta = json.loads((w.models / version / "model.json").read_text())
    iv = meta["lineage"]["member_interest"]["version"]
    embed_interest(w, iv)
    embed_catalog(w, version)
    batch_jobs = _vectors(w.embeddings / version / "jobs.parquet", "job_id")
    batch_members = _vectors(w.embeddings / version / "members.parquet", "member_id")
    batch_interest = _vectors(w.interest_embeddings / iv / "members.parquet", "member_id")

    served = live_jobs(release_slot(ws))
    active = set(final_jobs.loc[final_jobs["active"].astype(bool), "job_id"].astype(int))
    assert {j for j, (_, rec) in served.items() if rec["active"]} == active
    for jid in [*picked[:30], *range(8_000_000, 8_000_010)]:
        np.testing.assert_allclose(served[jid][0], batch_jobs[jid], atol=ATOL, err_msg=str(jid))
    store = open_store(ws / "feature_repo")
    touched = members["member_id"].iloc[:15].astype(int).tolist()
    for got, want in (
        (member_embeddings(store, touched, version), batch_members),
        (member_interest(store, touched, iv), batch_interest),
    ):
        for mid in touched:
            np.testing.assert_allclose(got[mid], want[mid], atol=ATOL, err_msg=str(mid))


def _vectors(path: Path, key: str) -> dict[int, np.ndarray]:
    df = pd.read_parquet(path)
    pairs = zip(df[key], df["embedding"], strict=True)
    return {int(i): np.asarray(v, np.float32) for i, v in pairs}


def _burst(broker: Broker, jobs: pd.DataFrame, members: pd.DataFrame, n: int) -> None:
    """``n`` rounds of updates, posts, closes and profile changes, some late and re-ordered."""
    t, ids = now(), jobs["job_id"].tolist()
    for i in range(n):
        jid = ids[i % 25]
        when = t + timedelta(seconds=i if i % 7 else -i)  # every 7th arrives late
        broker.produce(encode("job_updated", jid, when, job_record(jobs, jid, title=f"T{i}")))
        if i % 5 == 0:
            new = 7_000_000 + i
            broker.produce(encode("job_posted", new, t, job_record(jobs, jid, job_id=new)))
        if i % 9 == 0:
            broker.produce(encode("job_closed", ids[100 + i], t))
        if i % 4 == 0:
            mid = int(members["member_id"].iloc[i % 11])
            rec = profile_record(members, mid, headline=f"H{i}")
            broker.produce(encode("member_profile_updated", mid, when, rec))


def _state(ws: Path, members: list[int]) -> dict[str, Any]:
    served = live_jobs(release_slot(ws))
    store = open_store(ws / "feature_repo")
    w = Workspace(ws)
    version = live_version(w.root)
    return {
        "jobs": served,
        "profiles": member_profiles(store, members),
        "members": member_embeddings(store, members, version),
    }


def _assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["jobs"].keys() == want["jobs"].keys()
    for jid, (vec, rec) in want["jobs"].items():
        np.testing.assert_allclose(got["jobs"][jid][0], vec, atol=ATOL)
        assert got["jobs"][jid][1]["title"] == rec["title"], jid
    assert got["profiles"] == want["profiles"]
    for mid, vec in want["members"].items():
        np.testing.assert_allclose(got["members"][mid], vec, atol=ATOL)


def test_sigkill_mid_stream_loses_nothing_and_duplicates_nothing(
    setup: Setup, platform_ws: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    ws, jobs, members, broker, _ = setup
    _burst(broker, jobs, members, 160)
    total = broker.client.xlen("ebr:events")
    job = StreamJob(ws, redis_server.url, tmp_path / "stream.log", "--max-events", "8",
                    "--claim-idle-ms", "2000")  # fmt: skip
    try:
        while acked(broker.client)[1] < total // 3:
            assert job.proc.poll() is None, job.output()
            time.sleep(0.02)
        job.kill()  # mid-stream: some polls acknowledged, one maybe half-written
        assert acked(broker.client)[1] < total
        job = StreamJob(ws, redis_server.url, tmp_path / "stream.log", "--max-events", "8",
                        "--claim-idle-ms", "2000")  # fmt: skip
        wait_drained(broker.client, job)
    finally:
        job.stop()
    killed_ids = members["member_id"].iloc[:11].astype(int).tolist()
    got = _state(ws, killed_ids)

    # A clean replay of the same stream into a fresh copy, with a fresh Redis.
    clean_ws = copy_workspace(platform_ws, tmp_path / "clean")
    replay = RedisServer(tmp_path / "redis-clean")
    try:
        again = Broker(replay.url, "producer")
        for _, fields in broker.client.xrange("ebr:events"):
            again.produce({k.decode(): v.decode() for k, v in fields.items()})
        stream_until_drained(clean_ws, again.client, replay.url, tmp_path / "clean.log")
    finally:
        replay.stop()
    _assert_same(got, _state(clean_ws, killed_ids))
    live = release_slot(ws)
    ids, _, _ = live.delta()
    assert len(ids) == len(set(ids.tolist()))  # no job served twice
    assert live.stats()["live_items"] == len(live_jobs(live))


def test_redis_restart_and_a_new_release_are_picked_up_without_restarting_the_job(
    setup: Setup, platform_ws: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    ws, jobs, members, broker, _ = setup
    first = int(jobs["job_id"].iloc[0])
    posted = job_record(jobs, first, job_id=6_000_001)
    broker.produce(encode("job_posted", 6_000_001, now(), posted))
    job = StreamJob(ws, redis_server.url, tmp_path / "stream.log")
    try:
        wait_drained(broker.client, job)
        redis_server.kill()  # SIGKILL; its append-only file keeps what was acknowledged
        redis_server.start()
        w = Workspace(ws)
        version = live_version(w.root)
        built = build_job_slot(w, version, IndexConfig())
        candidate = provision(w, version, slot_name=built["slot"]).id
        broker.produce(
            encode("job_posted", 6_000_002, now(), job_record(jobs, first, job_id=6_000_002))
        )
        wait_drained(broker.client, job)
    finally:
        job.stop()
    live, new = live_jobs(release_slot(ws)), live_jobs(release_slot(ws, candidate))
    assert {6_000_001, 6_000_002} <= live.keys()
    # The candidate was built from the batch catalogue: the job brought it up to date with
    # what was streamed before (6_000_001) and wrote to it from then on (6_000_002).
    assert {6_000_001, 6_000_002} <= new.keys()


def test_one_record_in_every_valid_json_form_is_applied(
    setup: Setup, platform_ws: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Valid values a producer may write differently (ISO times with and without fractions,
    "Z" or an offset, whole numbers for float fields, a tuple-ish list) in one poll: none is
    refused, and one event the sinks cannot take does not stop the others (dead-lettered)."""
    ws, jobs, members, broker, _ = setup
    t, base = now(), int(jobs["job_id"].iloc[0])
    forms = ["2026-09-05T22:50:04+00:00", "2026-09-05T22:50:04.123456+00:00",
             "2026-09-05T22:50:04Z", "2026-09-05T22:50:04.5+02:00", "2026-09-05"]  # fmt: skip
    posted = {}
    for i, when in enumerate(forms):
        jid = 2_000_000 + i
        posted[jid] = job_record(jobs, base, job_id=jid, posted_at=when, lat=52, lon=13,
                                 title=f"Form {i}")  # fmt: skip
        broker.produce(encode("job_posted", jid, t, posted[jid]))
    member = int(members["member_id"].iloc[2])
    rec = profile_record(members, member, lat=45, lon=-75, max_commute_km=60)
    broker.produce(encode("member_profile_updated", member, t, rec))
    stream_until_drained(ws, broker.client, redis_server.url, tmp_path / "stream.log")
    assert broker.dead_letters() == []
    served = live_jobs(release_slot(ws))
    for jid, rec in posted.items():
        assert served[jid][1]["title"] == rec["title"]
        assert served[jid][1]["posted_at"] == pd.to_datetime(rec["posted_at"], utc=True)
    got = member_profiles(open_store(ws / "feature_repo"), [member])[member]
    assert (got["lat"], got["max_commute_km"]) == (45.0, 60.0)
