"""Training objectives on hand-built batches: logQ correction, hard negatives, task rows and
heads; the heuristic negatives; the member-interest model, its point-in-time history and the
lineage a composite model records."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from ebr.config import DataConfig, ModelConfig, TrainConfig
from ebr.data.marketplace import generate
from ebr.data.pairs import hard_negatives, positive_pairs
from ebr.model.artifact import load_two_tower, save_model
from ebr.model.features import request_tensors
from ebr.model.infer import encode_requests
from ebr.model.interest import engagements, history_as_of, train_interest
from ebr.model.specs import tower_specs, two_tower
from ebr.model.towers import RequestTower, in_batch_softmax_loss
from ebr.model.train import train, train_with_interest
from ebr.versions import LineageError, check_lineage

CFG = ModelConfig(hash_buckets=4096, cat_buckets=512, token_dim=16, hidden=32, dim=16)
T = 0.5


def _unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_logq_subtracts_log_sampling_probability_from_in_batch_logits() -> None:
    req = _unit([1, 0], [0, 1], [1, 1])
    item = _unit([1, 0], [0, 1], [1, 1])
    log_q = torch.log(torch.tensor([0.7, 0.2, 0.1]))
    got = in_batch_softmax_loss(req, item, torch.arange(3), T, log_q=log_q)
    logits = req @ item.T / T - log_q[None, :]
    assert got.item() == pytest.approx(F.cross_entropy(logits, torch.arange(3)).item(), abs=1e-6)
    # A popular negative is penalised less after the correction: the request whose positive
    # is the rare item loses less when the competing item is the popular one.
    plain = in_batch_softmax_loss(req, item, torch.arange(3), T)
    assert got.item() != pytest.approx(plain.item())
    with pytest.raises(ValueError, match="log_q"):
        in_batch_softmax_loss(req, item, torch.arange(3), T, log_q=log_q[:2])


def test_hard_negatives_join_the_softmax_and_mask_own_positive_and_empty_slots() -> None:
    req = _unit([1, 0], [0, 1])
    item = _unit([1, 0], [0, 1])
    ids = torch.tensor([10, 11])
    base = in_batch_softmax_loss(req, item, ids, T)
    # A hard negative close to request 0 raises its loss; -1 slots change nothing.
    close = _unit([0.9, 0.1], [0, 1])
    harder = in_batch_softmax_loss(req, item, ids, T, hard=close, hard_ids=torch.tensor([12, -1]))
    assert harder > base
    empty = in_batch_softmax_loss(req, item, ids, T, hard=close, hard_ids=torch.tensor([-1, -1]))
    assert empty.item() == pytest.approx(base.item(), abs=1e-6)
    # The same job as a row's positive is never its negative.
    own = in_batch_softmax_loss(req, item, ids, T, hard=item[:1], hard_ids=torch.tensor([10]))
    expected = F.cross_entropy(
        torch.tensor(
            [
                [1 / T, 0.0, float("-inf")],
                [0.0, 1 / T, 0.0],
            ]
        ),
        torch.arange(2),
    )
    assert own.item() == pytest.approx(expected.item(), abs=1e-5)


def test_task_rows_select_positives_but_keep_every_item_as_negative() -> None:
    req = _unit([1, 0], [0, 1], [1, 1])
    item = _unit([1, 0], [0, 1], [1, 1])
    rows = torch.tensor([True, False, True])
    got = in_batch_softmax_loss(req, item, torch.arange(3), T, rows=rows)
    logits = (req @ item.T / T)[rows]
    assert got.item() == pytest.approx(
        F.cross_entropy(logits, torch.tensor([0, 2])).item(), abs=1e-6
    )
    none = in_batch_softmax_loss(req, item, torch.arange(3), T, rows=torch.zeros(3, dtype=bool))
    assert none.item() == 0.0  # a batch without this task's positives adds nothing


def test_request_tower_has_one_head_per_task_starting_equal() -> None:
    tower = RequestTower(CFG, tower_specs(CFG)[0])
    assert tower.tasks == ("apply", "save", "click")
    batch = {k: torch.from_numpy(v[None]) for k, v in request_tensors("nurse", None, CFG).items()}
    outs = [tower(task=t, **batch) for t in tower.tasks]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0])  # identity-initialised heads
    torch.testing.assert_close(tower(**batch), outs[0])  # serve_task = apply
    with pytest.raises(KeyError, match="unknown task"):
        tower(task="hire", **batch)
    with pytest.raises(ValueError, match="serve_task"):
        ModelConfig(tasks=("click",), serve_task="apply")


def test_query_only_tower_ignores_the_member_and_composite_reads_interest() -> None:
    mp = generate(DataConfig(n_jobs=100))
    member = mp.members.iloc[0].to_dict()
    q_only = two_tower(replace(CFG, request_inputs="query")).request
    a = encode_requests(q_only, ["nurse"], [member], q_only.cfg)
    b = encode_requests(q_only, ["nurse"], [None], q_only.cfg)
    np.testing.assert_allclose(a, b)
    cfg = replace(CFG, interest_dim=4)
    comp = two_tower(cfg).request
    with_interest = {**member, "interest": np.ones(4, dtype=np.float32)}
    x = encode_requests(comp, ["nurse"], [with_interest], cfg)
    y = encode_requests(comp, ["nurse"], [member], cfg)
    assert not np.allclose(x, y)
    with pytest.raises(ValueError, match="interest embedding has 3 dims"):
        request_tensors("nurse", {**member, "interest": np.ones(3)}, cfg)


def test_hard_negatives_are_skipped_impressions_or_same_title_elsewhere() -> None:
    jobs = pd.DataFrame(
        {
            "job_id": [1, 2, 3, 4],
            "title": ["Nurse", "Nurse", "Nurse", "Welder"],
            "city": ["Berlin", "Berlin", "Paris", "Berlin"],
        }
    )
    ts = pd.Timestamp("2026-01-01", tz="UTC")
    imp = pd.DataFrame(
        {
            "session_id": [1, 1, 2],
            "member_id": [7, 7, 8],
            "query": ["nurse", "nurse", None],
            "job_id": [1, 4, 4],
            "outcome": pd.Categorical(["apply", "none", "click"]),
            "ts": [ts, ts, ts],
        }
    )
    pairs = positive_pairs(imp)
    for seed in range(20):
        got = hard_negatives(imp, pairs, jobs, np.random.default_rng(seed))
        # Job 1 (Nurse, Berlin): the skipped job 4 of its session or Nurse in Paris (3);
        # never itself nor job 2 (same title, same city). Job 4: no skip, no other Welder.
        assert got[0] in (3, 4)
        assert got[1] == -1


@pytest.fixture(scope="module")
def market():
    return generate(DataConfig(n_jobs=800, seed=11))


def test_history_is_point_in_time(market) -> None:
    engaged = engagements(market.impressions, market.jobs)
    cut = engaged["ts"].quantile(0.5)
    hist = history_as_of(engaged, cut)
    later = engaged[engaged["ts"] >= cut]
    title = dict(zip(market.jobs["job_id"], market.jobs["title"], strict=True))
    # A member seen only after the cut has no history yet.
    only_later = set(later["member_id"]) - set(engaged.loc[engaged["ts"] < cut, "member_id"])
    assert all(m not in hist for m in only_later)
    some = next(iter(hist))
    before = engaged[(engaged["member_id"] == some) & (engaged["ts"] < cut)]
    assert hist[some].startswith(title[int(before.iloc[-1]["job_id"])])


def test_interest_model_lineage_round_trips_and_is_enforced(market, tmp_path) -> None:
    tables = (market.jobs, market.members, market.impressions)
    tcfg = TrainConfig(epochs=1, batch_size=64)
    interest, metrics = train_interest(*tables, tcfg)
    assert metrics["heldout_member_recall@100"] > 100 / len(market.jobs)
    idir = save_model(interest, tmp_path / "interest", "v2", {"metrics": metrics})
    model, _, lineage = train_with_interest(*tables, idir, CFG, tcfg)
    assert model.cfg.interest_dim == interest.cfg.dim
    mdir = save_model(model, tmp_path / "models", "v5", {"lineage": lineage})
    _, cfg, meta = load_two_tower(mdir)
    assert meta["lineage"]["member_interest"]["version"] == "v2"
    assert check_lineage(meta, idir) == "v2"
    # Another interest artifact under the same version name is not the co-trained one.
    other, _ = train_interest(*tables, replace(tcfg, seed=99))
    odir = save_model(other, tmp_path / "elsewhere", "v2", {})
    with pytest.raises(LineageError, match="checksums"):
        check_lineage(meta, odir)
    with pytest.raises(LineageError, match="not at"):
        check_lineage(meta, tmp_path / "missing")
    no_lineage = {k: v for k, v in meta.items() if k != "lineage"}
    with pytest.raises(LineageError, match="records none"):
        check_lineage(no_lineage, idir)
    with pytest.raises(ValueError, match="interest_dim"):
        train(*tables, cfg, tcfg)  # a composite model without its snapshots


def test_multi_task_training_reports_a_curve_per_task(market) -> None:
    _, metrics = train(
        market.jobs, market.members, market.impressions, CFG, TrainConfig(epochs=2, batch_size=64)
    )
    assert set(metrics["task_loss_curves"]) == {"apply", "save", "click"}
    assert all(
        len(c) == 2 and all(math.isfinite(x) for x in c)
        for c in metrics["task_loss_curves"].values()
    )
    assert metrics["peak_rss_mib"] > 0 and metrics["train_seconds"] > 0
