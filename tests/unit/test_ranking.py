"""Ranking metrics, baselines and the offline evaluation report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ebr.config import DataConfig, ModelConfig, TrainConfig
from ebr.data.marketplace import generate
from ebr.data.pairs import time_split
from ebr.eval.ranking import hybrid_ranking, popularity_ranking
from ebr.eval.report import evaluate_marketplace, write_report
from ebr.metrics import mrr, ndcg_at, recall_at
from ebr.model.train import train

# q0: positives 2 and 3 at ranks 2 and 3, 10 never retrieved; q1: no positives (skipped);
# q2: positive 9 at rank 2, rest of the list padded with -1.
RANKED = np.array([[1, 2, 3, -1], [4, 5, 6, 7], [8, 9, -1, -1]], dtype=np.int64)
POSITIVES = [{2, 3, 10}, set(), {9}]


def test_recall_at_skips_empty_positives_and_ignores_padding() -> None:
    got = recall_at(RANKED, POSITIVES, [1, 2, 4])
    assert got == pytest.approx({1: 0.0, 2: (1 / 3 + 1) / 2, 4: (2 / 3 + 1) / 2})


def test_mrr_first_positive_rank() -> None:
    assert mrr(RANKED, POSITIVES) == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert mrr(np.array([[1, -1]]), [{5}]) == 0.0
    assert mrr(np.array([[1, -1]]), [set()]) == 0.0  # nothing to score


def test_ndcg_binary() -> None:
    d = 1 / np.log2(np.arange(3) + 2)  # discounts of ranks 1..3
    q0 = (d[1] + d[2]) / (d[0] + d[1] + d[2])
    q2 = d[1] / d[0]
    assert ndcg_at(RANKED, POSITIVES, 3) == pytest.approx((q0 + q2) / 2)
    assert ndcg_at(np.array([[3, 2, 1]]), [{3, 2}], 3) == pytest.approx(1.0)


def test_ndcg_graded_gains() -> None:
    # apply (3) at rank 3, click (1) at rank 1: DCG = 1 + 3/2, ideal = 3 + 1/log2(3).
    got = ndcg_at(np.array([[1, 2, 3]]), [{1, 3}], 3, gains=[{1: 1.0, 3: 3.0}])
    assert got == pytest.approx(2.5 / (3 + 1 / np.log2(3)))
    perfect = ndcg_at(np.array([[3, 1, 2]]), [{1, 3}], 3, gains=[{1: 1.0, 3: 3.0}])
    assert perfect == pytest.approx(1.0)


def _imp(session: int, job: int, outcome: str, day: int) -> dict[str, object]:
    return {
        "session_id": session,
        "member_id": 1,
        "query": "nurse",
        "job_id": job,
        "outcome": outcome,
        "ts": pd.Timestamp("2026-10-01", tz="UTC") + pd.Timedelta(days=day),
    }


def test_popularity_counts_train_engagement_only() -> None:
    rows = [_imp(1, 2, "apply", 0), _imp(1, 2, "click", 0), _imp(1, 3, "save", 0)]
    rows += [_imp(1, 1, "none", 0)] * 5  # shown, never engaged: not popular
    rows += [_imp(2, 4, "apply", 9)] * 10  # the hottest job, but only in the eval days
    train_imp, held = time_split(pd.DataFrame(rows), eval_days=2)
    assert set(held["job_id"]) == {4}
    got = popularity_ranking(train_imp, np.array([5, 4, 3, 2, 1]), n_queries=2, k=3)
    np.testing.assert_array_equal(got, [[2, 3, 1], [2, 3, 1]])
    padded = popularity_ranking(train_imp, np.array([2, 3]), n_queries=1, k=3)
    np.testing.assert_array_equal(padded, [[2, 3, -1]])


def test_hybrid_rrf_order() -> None:
    ebr_ids, ebr_sc = np.array([[1, 2, 3]]), np.array([[0.9, 0.8, 0.7]])
    bm_ids, bm_sc = np.array([[3, 4, -1]]), np.array([[5.0, 2.0, 0.0]])
    # 3: 1/63 + 1/61 (in both); 1: 1/61; 2 and 4: 1/62 each, tie broken by best rank then id.
    got = hybrid_ranking(ebr_ids, ebr_sc, bm_ids, bm_sc, k=5, alpha=0.5, fusion="rrf")
    np.testing.assert_array_equal(got, [[3, 1, 2, 4, -1]])
    # Score fusion: ebr normalised 1, 0.5, 0 and bm25 1, 0 -> 1 and 3 tie at 0.5 (first
    # positions both, lower id first), then 2 (0.25), then 4 (0).
    got = hybrid_ranking(ebr_ids, ebr_sc, bm_ids, bm_sc, k=5, alpha=0.5, fusion="score")
    np.testing.assert_array_equal(got, [[1, 3, 2, 4, -1]])
    # alpha=1 is EBR alone, ordered by its scores even when the list is not.
    got = hybrid_ranking(np.array([[1, 2]]), np.array([[0.1, 0.9]]), bm_ids, bm_sc, 2, alpha=1.0)
    np.testing.assert_array_equal(got, [[2, 1]])


def test_validation_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="positive sets"):
        recall_at(RANKED, POSITIVES[:2], [1])
    with pytest.raises(ValueError, match="k must be in"):
        recall_at(RANKED, POSITIVES, [5])
    with pytest.raises(ValueError, match="2-d"):
        mrr(np.array([1, 2]), [{1}])
    with pytest.raises(ValueError, match="gain maps"):
        ndcg_at(RANKED, POSITIVES, 2, gains=[{}])
    with pytest.raises(ValueError, match="gains must be >= 0"):
        ndcg_at(np.array([[1]]), [{1}], 1, gains=[{1: -1.0}])
    with pytest.raises(ValueError, match="alpha"):
        hybrid_ranking(RANKED, RANKED * 1.0, RANKED, RANKED * 1.0, 2, alpha=1.5)
    with pytest.raises(ValueError, match="bm25_ids"):
        hybrid_ranking(RANKED, RANKED * 1.0, RANKED, RANKED[:, :2] * 1.0, 2)
    with pytest.raises(ValueError, match="lacks columns"):
        popularity_ranking(pd.DataFrame({"job_id": [1]}), np.array([1]), 1, 1)


def test_evaluate_marketplace_report(tmp_path: Path) -> None:
    mp = generate(DataConfig(n_jobs=1500))
    mcfg = ModelConfig(hash_buckets=4096, cat_buckets=512, token_dim=16, hidden=32, dim=16)
    tcfg = TrainConfig(epochs=3, batch_size=128)
    model, fit = train(mp.jobs, mp.members, mp.impressions, mcfg, tcfg)
    report = evaluate_marketplace(
        model, mcfg, mp.jobs, mp.members, mp.impressions, eval_days=tcfg.eval_days
    )

    metrics = {f"recall@{k}" for k in (10, 50, 100, 500)} | {"ndcg@10", "ndcg@10_graded", "mrr"}
    expected = {"search": {"ebr", "bm25", "popularity", "hybrid"}, "jymbii": {"ebr", "popularity"}}
    for task, methods in expected.items():
        assert set(report[task]["methods"]) == methods
        for method, m in report[task]["methods"].items():
            assert set(m) == metrics, (task, method)
            assert all(0.0 <= v <= 1.0 for v in m.values()), (task, method, m)
        by_outcome = report[task]["ebr_recall@100_by_outcome"]
        assert set(by_outcome) == {"apply", "save", "click"}
        assert all(0.0 <= v <= 1.0 for v in by_outcome.values())
    search = report["search"]["methods"]
    assert search["ebr"]["recall@100"] > search["popularity"]["recall@100"]

    report["training"] = {k: fit[k] for k in ("loss_curve", "task_loss_curves")}
    json_path, png_path = write_report(report, tmp_path / "eval")
    written = json.loads(json_path.read_text())
    assert written["search"]["methods"]["ebr"] == search["ebr"]
    assert len(written["training"]["task_loss_curves"]["apply"]) == tcfg.epochs
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_score_fusion_sums_min_max_normalised_scores() -> None:
    from ebr.index.query.fusion import fuse_lists, score_fusion

    a_ids, a_sc = np.array([[1, 2, 3, -1]]), np.array([[0.9, 0.5, 0.1, -np.inf]])
    b_ids, b_sc = np.array([[3, 4, -1, -1]]), np.array([[12.0, 2.0, -np.inf, -np.inf]])
    scores, ids = score_fusion([a_ids, b_ids], [a_sc, b_sc], [0.5, 0.5], 4)
    # 1: 0.5*1; 3: 0.5*0 + 0.5*1; 2: 0.5*0.5; 4: 0 -> 1 and 3 tie, 1 has the better position
    assert ids.tolist() == [[1, 3, 2, 4]]
    np.testing.assert_allclose(scores[0], [0.5, 0.5, 0.25, 0.0])
    _, ids = score_fusion([a_ids, b_ids], [a_sc, b_sc], [1.0, 0.0], 3)
    assert ids.tolist() == [[1, 2, 3]]
    flat = np.array([[2.0, 2.0, -np.inf, -np.inf]])  # one score for all: every hit counts 1
    scores, ids = score_fusion([a_ids, b_ids], [a_sc, flat], [0.5, 0.5], 4)
    assert ids.tolist() == [[1, 3, 4, 2]]  # 1, 3, 4 tie at 0.5: best position, then id
    np.testing.assert_allclose(scores[0], [0.5, 0.5, 0.5, 0.25])
    empty = np.full((1, 4), -1)
    _, ids = score_fusion([empty, empty], [a_sc, b_sc], [0.5, 0.5], 2)
    assert ids.tolist() == [[-1, -1]]
    with pytest.raises(ValueError, match="fusion must be one of"):
        fuse_lists([a_ids], [a_sc], [1.0], 2, fusion="max")


def test_row_weights_scale_a_list_query_by_query() -> None:
    from ebr.index.query.fusion import fuse_lists

    a_ids, a_sc = np.array([[1, 2], [1, 2]]), np.array([[0.9, 0.1], [0.9, 0.1]])
    b_ids, b_sc = np.array([[3, 4], [3, 4]]), np.array([[9.0, 1.0], [9.0, 1.0]])
    for fusion in ("rrf", "score"):
        _, ids = fuse_lists(
            [a_ids, b_ids], [a_sc, b_sc], [0.4, 0.6], 2, fusion, [None, np.array([1.0, 0.0])]
        )
        assert ids[0, 0] == 3 and ids[1].tolist() == [1, 2]  # row 2: the second list off
    with pytest.raises(ValueError, match="row weights"):
        fuse_lists([a_ids, b_ids], [a_sc, b_sc], [0.5, 0.5], 2, "rrf", [None, np.array([-1.0, 1])])


def test_scaled_lists_keep_their_absolute_share() -> None:
    from ebr.index.query.fusion import score_fusion

    a_ids, a_sc = np.array([[1, 2]]), np.array([[0.9, 0.1]])
    b_ids, b_sc = np.array([[3, 4]]), np.array([[1.0, 0.5]])
    # min-max: 3 counts 1.0 like 1; divided by an attainable 10, it counts 0.1.
    _, ids = score_fusion([a_ids, b_ids], [a_sc, b_sc], [0.5, 0.5], 4)
    assert ids[0, :2].tolist() == [1, 3]
    scores, ids = score_fusion(
        [a_ids, b_ids], [a_sc, b_sc], [0.5, 0.5], 4, scales=[None, np.array([10.0])]
    )
    assert ids.tolist() == [[1, 3, 4, 2]]
    np.testing.assert_allclose(scores[0], [0.5, 0.05, 0.025, 0.0])
    with pytest.raises(ValueError, match="scales must be"):
        score_fusion([a_ids, b_ids], [a_sc, b_sc], [0.5, 0.5], 2, scales=[None, np.array([0.0])])
