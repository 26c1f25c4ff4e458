"""Served-impression log (durable, per-process files) and the offline A/B readout on it."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ebr.config import DataConfig, Workspace
from ebr.data.engagement import Hidden, utility
from ebr.data.marketplace import generate_with_truth, write_marketplace
from ebr.data.oracle import oracle_topk
from ebr.data.replay import engagement_probabilities, hidden_from_tables
from ebr.release.ab_report import ab_report, write_readout
from ebr.release.impressions import (
    COLUMNS,
    ImpressionLog,
    check_record,
    impression_dir,
    read_impressions,
)
from ebr.release.state import add_candidate, start_experiment, stop_experiment

REL_A, REL_B = "rel-v1-20261130T101500123456", "rel-v2-20261201T090000000001"
T0 = datetime(2026, 12, 1, 9, tzinfo=UTC)


def rec(request_id: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "request_id": request_id, "ts": T0.isoformat(), "kind": "search", "release": REL_A,
        "arm": None, "experiment": None, "member_id": 7, "request_key": None,
        "query": "nurse", "job_ids": [3, 1, 2],
    }  # fmt: skip
    return {**base, **kw}


# ---- the impression log


def test_appends_from_threads_and_processes_round_trip_in_writer_order(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    # Two logs stand for two serving processes: each writes its own file.
    with (
        ImpressionLog(impression_dir(ws), flush_s=0.05) as a,
        ImpressionLog(impression_dir(ws)) as b,
    ):

        def writer(t: int) -> None:
            for i in range(150):
                log = a if t % 2 == 0 else b
                log.append(rec(f"t{t}-{i}", member_id=t, job_ids=np.arange(i % 7, dtype=np.int64)))

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        a.flush()
        b.flush()
        df = read_impressions(ws)  # before close: flush alone made it readable
        assert a.path != b.path and a.path is not None and b.path is not None
    assert list(df.columns) == list(COLUMNS) and len(df) == 600
    assert df.attrs == {"torn_lines": 0, "files": 2}
    names = sorted(p.name for p in impression_dir(ws).iterdir())
    assert all(n.startswith("impressions-") and n.endswith(".jsonl") for n in names)
    for t in range(4):
        mine = df[df["member_id"] == t]
        assert mine["request_id"].tolist() == [f"t{t}-{i}" for i in range(150)]  # in order
        assert mine["job_ids"].tolist() == [list(range(i % 7)) for i in range(150)]
    assert (df["ts"] == pd.Timestamp(T0)).all() and df["member_id"].dtype == "Int64"


def test_flush_does_not_wait_for_the_group_commit_interval(tmp_path: Path) -> None:
    with ImpressionLog(tmp_path, flush_s=60.0) as log:
        log.append(rec("first"))
        log.flush(timeout_s=10)
        log.append(rec("second"))  # within flush_s of the last fsync: the writer would wait
        log.flush(timeout_s=10)
        assert read_impressions(tmp_path)["request_id"].tolist() == ["first", "second"]


def test_a_torn_last_line_is_skipped_and_counted(tmp_path: Path) -> None:
    with ImpressionLog(tmp_path) as log:
        for i in range(3):
            log.append(rec(f"r{i}"))
    assert log.path is not None
    with open(log.path, "ab") as f:  # a crash in the middle of the next write
        f.write(json.dumps(rec("r3")).encode()[:40])
    df = read_impressions(tmp_path)
    assert df["request_id"].tolist() == ["r0", "r1", "r2"] and df.attrs["torn_lines"] == 1
    # The same damage anywhere but at the end is corruption, not a crash: refused.
    log.path.write_bytes(log.path.read_bytes() + b"\n" + json.dumps(rec("r4")).encode() + b"\n")
    with pytest.raises(ValueError, match=":4 is not a JSON record"):
        read_impressions(tmp_path)


def test_unencodable_records_are_dropped_and_counted_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING), ImpressionLog(tmp_path) as log:
        log.append(rec("a"))
        log.append(rec("nan", query=float("nan")))
        log.append(rec("obj", extra=object()))
        log.append(rec("b"))
        log.flush()
        assert log.dropped == 2
    assert read_impressions(tmp_path)["request_id"].tolist() == ["a", "b"]
    assert "'nan' dropped" in caplog.text and "'obj' dropped" in caplog.text


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"release": None}, "release"),
        ({"release": "v2"}, "release"),
        ({"kind": "feed"}, "kind"),
        ({"request_id": ""}, "request_id"),
        ({"ts": "yesterday"}, "ts"),
        ({"ts": "2026-12-01T09:00:00"}, "ts"),  # no offset
        ({"ts": "2026-12-01T09:00:00+02:00"}, "ts"),  # not UTC
        ({"job_ids": [4, -1]}, "job_ids"),  # FAISS's padding for "no result"
        ({"job_ids": "1,2"}, "job_ids"),
        ({"job_ids": [1, 2.5]}, "job_ids"),
        ({"member_id": True}, "member_id"),
        ({"arm": "control"}, "arm"),  # an arm without its experiment
    ],
)
def test_records_with_a_bad_field_are_refused_by_name(bad: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"field '{field}'"):
        check_record({**rec("x"), **bad})


def test_the_log_refuses_incomplete_records_and_appends_after_close(tmp_path: Path) -> None:
    log = ImpressionLog(tmp_path)
    incomplete = rec("x")
    del incomplete["job_ids"], incomplete["member_id"]
    with pytest.raises(ValueError, match=r"\['member_id', 'job_ids'\]"):
        log.append(incomplete)
    log.close()
    with pytest.raises(RuntimeError, match="closed"):
        log.append(rec("late"))
    assert not list(tmp_path.iterdir())  # nothing was written, so no empty file either
    assert check_record({k: v for k, v in rec("x").items() if k != "ts"})["ts"]  # ts: now


# ---- the A/B readout

CFG = DataConfig(n_jobs=300, seed=11)


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Hidden]:
    ws = Workspace(tmp_path_factory.mktemp("ab"))
    write_marketplace(CFG, ws.data)
    return ws, generate_with_truth(CFG)[1]  # same config: the truth behind those tables


def test_the_replay_recovers_the_generators_preferences_and_engagement(market) -> None:
    ws, truth = market
    jobs, members = (pd.read_parquet(ws.data / f"{t}.parquet") for t in ("jobs", "members"))
    rebuilt = hidden_from_tables(jobs, members)
    mem, job = (g.ravel() for g in np.meshgrid(np.arange(len(members)), np.arange(len(jobs))))
    differs = ~np.isclose(utility(truth, mem, job), utility(rebuilt, mem, job))
    # Only skill labels several ESCO skills share within one profile stay ambiguous (0.3% of
    # pairs differ when labels alone decide).
    assert differs.mean() < 0.002
    # The expected engagement matches what the simulator drew for its own impression log.
    imp = pd.read_parquet(ws.data / "impressions.parquet")
    p_click, p_apply = engagement_probabilities(
        rebuilt, imp["member_id"].to_numpy() - 1, imp["job_id"].to_numpy() - 1,
        imp["position"].to_numpy(),
    )  # fmt: skip
    clicks, applies = (imp["outcome"] != "none").sum(), (imp["outcome"] == "apply").sum()
    assert abs(p_click.sum() / clicks - 1) < 0.15 and abs(p_apply.sum() / applies - 1) < 0.15


def _serve_experiment(ws: Workspace, truth: Hidden) -> None:
    """Arm 'good' shows each member the oracle's top 10, arm 'bad' random jobs; both log."""
    rng = np.random.default_rng(0)
    members = np.arange(1, len(truth.m_target) + 1)
    best = dict(zip(members, oracle_topk(truth, members, 10), strict=True))
    with ImpressionLog(impression_dir(ws)) as log:
        log.append(rec("old", experiment="earlier", arm="control", ts=(T0 - timedelta(days=9))
                       .isoformat()))  # fmt: skip
        for n, member in enumerate(np.tile(members, 3)):
            arm, release = ("good", REL_B) if member % 2 else ("bad", REL_A)
            shown = best[member] if arm == "good" else rng.choice(len(truth.j_occ), 10) + 1
            ts = (T0 + timedelta(seconds=n)).isoformat()
            log.append(rec(f"q{n}", experiment="good-vs-bad", arm=arm, release=release,
                           member_id=int(member), job_ids=shown, ts=ts))  # fmt: skip
        for n in range(5):  # anonymous visitors: logged, not replayable
            log.append(rec(f"anon{n}", experiment="good-vs-bad", arm="bad", member_id=None,
                           request_key=f"cookie-{n}"))  # fmt: skip
        log.append(rec("live", member_id=3))  # outside any experiment


def test_ab_report_sees_the_better_arm_and_is_deterministic(market, tmp_path: Path) -> None:
    ws, truth = market
    _serve_experiment(ws, truth)
    report = ab_report(ws, seed=0, n_draws=500, control="bad")  # latest experiment by default
    assert report["experiment"] == "good-vs-bad" and report["control"] == "bad"
    good, bad = report["arms"]["good"], report["arms"]["bad"]
    n_members = len(truth.m_target)
    assert good["members"] + bad["members"] == n_members and good["releases"] == [REL_B]
    assert good["requests"] + bad["requests"] == 3 * n_members + 5
    assert bad["anonymous_requests"] == 5 and bad["replayed_requests"] == bad["requests"] - 5
    lo, hi = bad["apply_rate"]["ci95"]
    assert 0 <= lo <= bad["apply_rate"]["mean"] <= hi < good["apply_rate"]["ci95"][0]
    for metric in ("apply_rate", "click_rate", "applies_per_request"):
        diff = report["differences"]["good"][metric]
        assert diff["significant"] and diff["ci95"][0] > 0 < diff["diff"]
    assert good["clicks_per_request"]["mean"] > good["click_rate"]["mean"]  # >= 1 vs count
    # Same seed, same readout; the CLI writes it atomically with a chart beside it.
    out = tmp_path / "ab.json"
    assert write_readout(ws, control="bad", out=out, n_draws=500) == report
    assert json.loads(out.read_text())["arms"]["good"]["apply_rate"] == good["apply_rate"]
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other = ab_report(ws, seed=1, n_draws=500, control="bad")["arms"]["good"]["apply_rate"]
    assert (
        other["mean"] == good["apply_rate"]["mean"] and other["ci95"] != good["apply_rate"]["ci95"]
    )
    with pytest.raises(ValueError, match="no requests of 'nope'"):
        ab_report(ws, experiment="nope")


def test_the_control_is_the_first_arm_the_experiment_was_started_with(market) -> None:
    ws, _ = market  # after the test above: its log is there
    for release in (REL_A, REL_B):
        add_candidate(ws, release)
    start_experiment(ws, "good-vs-bad", [("good", REL_B, 0.5), ("bad", REL_A, 0.5)])
    stop_experiment(ws)  # a finished experiment: its start event still says
    report = ab_report(ws, n_draws=200)
    assert report["control"] == "good" and list(report["differences"]) == ["bad"]
    assert report["differences"]["bad"]["apply_rate"]["ci95"][1] < 0


def test_a_search_is_replayed_by_what_was_typed(market) -> None:
    """One member's list of an occupation's best jobs for them, and their profile's best (of
    other occupations): searched for that occupation the first engages more than as a feed and
    the second less (it no longer matches what was typed); a corrected query counts as
    typed."""
    from ebr.data.esco import load_occupations
    from ebr.release.ab_report import score_requests

    ws, truth = market
    jobs, members = (pd.read_parquet(ws.data / f"{t}.parquet") for t in ("jobs", "members"))
    label = load_occupations().set_index("uri")["label"].str.lower()
    for member in (1, 2, 3, 5, 8):
        best = oracle_topk(truth, [member], 10)[0]
        occ = jobs["occupation_uri"].iloc[best[0] - 1]
        others = jobs[(jobs["occupation_uri"] != occ) & jobs["active"]]
        other = others["occupation_uri"].value_counts().index[0]
        pool = jobs.index[jobs["occupation_uri"] == other].to_numpy()
        u = utility(truth, np.full(len(pool), member - 1), pool)
        typed_jobs = jobs["job_id"].to_numpy()[pool[np.argsort(-u)[:10]]]
        profile = [j for j in best.tolist() if jobs["occupation_uri"].iloc[j - 1] != other]
        query = str(label[other])
        reqs = pd.DataFrame({
            "arm": "a", "release": REL_A, "member_id": member,
            "kind": ["search", "recommendations", "search", "recommendations"],
            "query": [query, None, query, None], "corrected_query": None,
            "job_ids": [list(typed_jobs), list(typed_jobs), profile, profile],
        })  # fmt: skip
        got = score_requests(reqs, jobs, members)["applies_per_request"].to_numpy()
        assert got[0] > got[1] and got[2] < got[3], (member, query, got)
        fixed = reqs.iloc[[0, 2]].assign(query="zzzz", corrected_query=query)
        assert np.allclose(score_requests(fixed, jobs, members)["applies_per_request"],
                           got[[0, 2]])  # fmt: skip
