"""A release's ranking stage: the ranker it pins (by checksum), gated on its held-out NDCG;
promotion and rollback carry it; a ranker changed after the release is refused; a nightly
re-embed keeps the live release's ranking (small workspaces of tests/unit/test_releases.py:
the towers are random bytes, the ranker a real LightGBM model on synthetic rows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ebr.config import GateConfig, RankerConfig, Workspace
from ebr.rank.model import MODEL_FILE, fit, save_ranker
from ebr.release import provision as ops
from ebr.release import state as st
from ebr.release.gates import ReleaseRefused
from ebr.release.ranking import RankingSpec, find_ranker, live_ranking
from ebr.release.record import read_release
from tests.unit.test_rank_parts import _synthetic
from tests.unit.test_releases import make_interest, make_version


def _ranker(ws: Workspace, version: str, ratio: float) -> Path:
    data = _synthetic(np.random.default_rng(1), 60)
    booster = fit(data, RankerConfig(trees=5, min_data_in_leaf=10))
    ndcg = {"all": {"retrieval": 0.6, "ranker": 0.6 * ratio, "ratio": ratio, "sessions": 60}}
    return save_ranker(ws, version, booster, RankerConfig(), {"ndcg@10": ndcg})


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    out = Workspace(tmp_path)
    make_interest(out, "v1")
    make_version(out, "v1", "v1")
    return out


def test_a_release_pins_its_ranker_and_gate(ws: Workspace) -> None:
    path = _ranker(ws, "v1", 1.3)
    release = ops.provision(ws, "v1", ranking=RankingSpec("latest", 150, 2, None))
    pin = release.ranking
    assert pin.ranker is not None and pin.ranker.id == path.name and pin.ranker.path == path
    assert (pin.depth, pin.max_per_company, pin.max_per_city) == (150, 2, None)
    gate = next(g for g in release.gates if g["gate"] == "ranker")
    assert gate["passed"] and gate["value"] == pytest.approx(1.3)
    plain = ops.provision(ws, "v1")  # the pair: same slot, retrieval order
    assert plain.ranking.ranker is None and plain.slot == release.slot
    assert "ranker" not in {g["gate"] for g in plain.gates}


def test_a_ranker_below_the_floor_or_unknown_is_refused(ws: Workspace) -> None:
    _ranker(ws, "v1", 0.95)
    with pytest.raises(ReleaseRefused, match="ranker gate"):
        ops.provision(ws, "v1", ranking=RankingSpec("latest"))
    assert ops.provision(ws, "v1", gates=GateConfig(min_ranker_ndcg_ratio=0.9),
                         ranking=RankingSpec("latest")).ranking.ranker  # fmt: skip
    with pytest.raises(FileNotFoundError, match="rank-v1-20200101T000000000000"):
        ops.provision(ws, "v1", ranking=RankingSpec("rank-v1-20200101T000000000000"))
    with pytest.raises(FileNotFoundError, match="no ranker of v2"):
        find_ranker(ws, "v2", "latest")
    for bad in ({"depth": 0}, {"depth": 5000}, {"max_per_company": 0}, {"max_per_city": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RankingSpec(**bad)  # type: ignore[arg-type]


def test_promotion_and_rollback_carry_it_and_a_changed_ranker_is_refused(ws: Workspace) -> None:
    path = _ranker(ws, "v1", 1.2)
    assert live_ranking(ws, "v1") == RankingSpec()  # nothing live yet: retrieval order
    plain = ops.provision(ws, "v1")
    ranked = ops.provision(ws, "v1", ranking=RankingSpec(path.name, max_per_company=3))
    ops.promote(ws, plain.id)
    ops.promote(ws, ranked.id)
    live = st.live_release(ws)
    assert live.ranking.ranker is not None and live.ranking.max_per_company == 3
    spec = live_ranking(ws, "v1")  # what a nightly re-embed of v1 records
    assert (spec.ranker, spec.max_per_company) == (path.name, 3)
    assert live_ranking(ws, "v2") == RankingSpec()
    ops.rollback(ws)
    assert st.live_release(ws).ranking.ranker is None
    (path / MODEL_FILE).write_text((path / MODEL_FILE).read_text() + "\n")  # retrained in place
    with pytest.raises(ReleaseRefused, match="changed since the release"):
        ops.promote(ws, ranked.id)
    assert read_release(ws, ranked.id).ranking.ranker is not None  # the record is unchanged
