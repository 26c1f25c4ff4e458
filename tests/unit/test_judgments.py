"""Relevance judgments (``ebr.eval.judgments``): saved per (query, member, job) with the
latest mark winning, never half-written or lost to a concurrent writer; NDCG@10 per release
from them, and the gate on it."""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from ebr.config import Workspace
from ebr.eval import judgments as jd


def test_a_mark_replaces_the_earlier_mark_of_the_same_query_member_and_job(
    tmp_path: Path,
) -> None:
    ws = Workspace(tmp_path)
    jd.record(ws, "nurses", "Registered  Nurse ", None, 7, True)
    jd.record(ws, "nurses", "registered nurse", None, 7, False)  # same query, normalised
    jd.record(ws, "nurses", "registered nurse", 12, 7, True)  # signed in: another query
    out = jd.record(ws, "nurses", "registered nurse", None, 8, True)
    assert out == {"set": "nurses", "judgments": 3, "queries": 2}
    marks = {(j.query, j.member_id, j.job_id): j.relevant for j in jd.read_set(ws, "nurses")}
    assert marks == {("registered nurse", None, 7): False, ("registered nurse", 12, 7): True,
                     ("registered nurse", None, 8): True}  # fmt: skip
    assert jd.list_sets(ws) == [{"name": "nurses", "judgments": 3, "queries": 2}]


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "x" * 65, "sp ace"])
def test_a_bad_set_name_is_refused_naming_it(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="judgment set's name"):
        jd.record(Workspace(tmp_path), name, "q", None, 1, True)
    assert not (tmp_path / "judgments").exists() or not any((tmp_path / "judgments").iterdir())


def test_a_judgment_needs_a_query_or_a_member(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="query, the member, or both"):
        jd.record(Workspace(tmp_path), "s", "   ", None, 1, True)


def test_a_damaged_set_is_named_not_silently_emptied(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    jd.record(ws, "s", "q", None, 1, True)
    path = tmp_path / "judgments" / "s.json"
    path.write_text(path.read_text()[:20])
    with pytest.raises(ValueError, match=r"s\.json is not a judgment set"):
        jd.read_set(ws, "s")
    with pytest.raises(ValueError, match="not a judgment set"):
        jd.record(ws, "s", "q", None, 2, True)  # refuses, rather than overwrite what it lost


def _mark_many(args: tuple[str, int]) -> None:
    root, start = args
    for job in range(start, start + 25):
        jd.record(Workspace(Path(root)), "shared", "data engineer", None, job, job % 2 == 0)


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_mark_many, [(str(tmp_path), 0), (str(tmp_path), 1000)]))
    items = jd.read_set(Workspace(tmp_path), "shared")
    assert sorted(j.job_id for j in items) == [*range(25), *range(1000, 1025)]


def test_ndcg_against_hand_computed_values() -> None:
    gains = {1: 1, 2: 1, 3: 0}
    assert jd.ndcg([1, 2, 3], gains) == pytest.approx(1.0)
    # relevant at ranks 2 and 3: (1/log2(3) + 1/log2(4)) / (1 + 1/log2(3))
    want = (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3))
    assert jd.ndcg([3, 1, 2], gains) == pytest.approx(want)
    assert jd.ndcg([9, 8], gains) == 0.0  # unjudged results gain nothing
    assert math.isnan(jd.ndcg([1], {1: 0}))  # nothing relevant: not scored


def test_report_scores_each_release_and_the_gate_compares_them() -> None:
    items = [jd.Judgment("nurse", None, 1, True), jd.Judgment("nurse", None, 2, False),
             jd.Judgment("chef", 5, 3, True)]  # fmt: skip
    good = {("nurse", None): [1, 2], ("chef", 5): [3]}
    bad = {("nurse", None): [2, 9, 1], ("chef", 5): [8]}
    result = jd.report(items, {
        "good": lambda q, m, k: good[(q, m)], "bad": lambda q, m, k: bad[(q, m)],
    })  # fmt: skip
    assert result["queries"] == 2 and result["releases"]["good"]["ndcg@10"] == 1.0
    assert result["releases"]["bad"]["ndcg@10"] == pytest.approx(0.5 / 2)
    assert result["releases"]["good"]["judged@10"] == pytest.approx((2 / 10 + 1 / 10) / 2)
    assert jd.gate(result, "good", 0.9, "bad", 1.0) == []
    faults = jd.gate(result, "bad", 0.3, "good", 0.95)
    assert len(faults) == 2 and "< 0.3" in faults[0] and "good's" in faults[1]
