"""The intent world (issue 21): search sessions carry an intent, the query names it, and
engagement follows the query; feeds keep the profile model; ``world="profile"`` is the old one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ebr.config import DataConfig
from ebr.data.engagement import INTENTS, adjacent_occupations, utility
from ebr.data.esco import occupation_skill_profiles
from ebr.data.marketplace import generate, generate_with_truth

N_JOBS = 4000


@pytest.fixture(scope="module")
def worlds():
    return {
        w: generate_with_truth(DataConfig(n_jobs=N_JOBS, seed=5, world=w))
        for w in ("intent", "profile")
    }


def _frame(mp, h) -> pd.DataFrame:
    imp = mp.impressions
    return imp.assign(
        occ=h.j_occ[imp["job_id"] - 1],
        target=h.m_target[imp["member_id"] - 1],
        engaged=imp["outcome"] != "none",
        title=mp.jobs["title"].to_numpy()[imp["job_id"] - 1],
    )


def test_intent_shares_and_labels(worlds) -> None:
    mp, _ = worlds["intent"]
    imp = mp.impressions
    sessions = imp.drop_duplicates("session_id")
    search = sessions[sessions["query"].notna()]
    assert sessions.loc[sessions["query"].isna(), "intent"].isna().all()  # feeds: no intent
    assert set(search["intent"]) == set(INTENTS)
    share = search["intent"].value_counts(normalize=True)
    assert abs(1 - share["profile"] - 0.35) < 0.03  # explore_share
    assert abs(share["adjacent"] / (1 - share["profile"]) - 0.6) < 0.08


def test_same_seed_same_intents_and_profile_world_has_none(worlds) -> None:
    again = generate(DataConfig(n_jobs=N_JOBS, seed=5))
    pd.testing.assert_frame_equal(again.impressions, worlds["intent"][0].impressions)
    assert "intent" not in worlds["profile"][0].impressions.columns


def test_exploring_searches_engage_with_the_query_not_the_profile(worlds) -> None:
    f = _frame(*worlds["intent"])
    search = f[f["query"].notna()]
    for intent in ("adjacent", "career_change"):
        e = search[(search["intent"] == intent) & search["engaged"]]
        assert len(e) > 50
        assert (e["occ"] == e["target"]).mean() < 0.05  # the profile's jobs are passed over
    prof = search[(search["intent"] == "profile") & search["engaged"]]
    assert (prof["occ"] == prof["target"]).mean() > 0.8
    # A title query: the engaged jobs carry what was typed far more often than the shown ones.
    typed = search["query"].str.lower()
    has = pd.Series(
        [q in t.lower() for q, t in zip(typed, search["title"], strict=True)], search.index
    )
    assert has[search["engaged"]].mean() > 0.8 > has.mean() + 0.2


def test_among_matching_jobs_profile_fit_decides(worlds) -> None:
    mp, h = worlds["intent"]
    f = _frame(mp, h)
    search = f[f["query"].notna()]
    typed = search["query"].str.lower()
    matching = search[[q in t.lower() for q, t in zip(typed, search["title"], strict=True)]]
    u = utility(h, matching["member_id"].to_numpy() - 1, matching["job_id"].to_numpy() - 1)
    engaged = matching["engaged"].to_numpy()
    assert u[engaged].mean() > u[~engaged].mean() + 0.5


def test_feeds_keep_their_behaviour(worlds) -> None:
    rates = {}
    for world, (mp, h) in worlds.items():
        f = _frame(mp, h)
        feed = f[f["query"].isna()]
        rates[world] = (feed["engaged"].mean(), (feed.loc[feed["engaged"], "occ"] ==
                        feed.loc[feed["engaged"], "target"]).mean())  # fmt: skip
    assert abs(rates["intent"][0] / rates["profile"][0] - 1) < 0.1
    assert abs(rates["intent"][1] - rates["profile"][1]) < 0.05


def test_profile_world_searches_follow_the_profile(worlds) -> None:
    f = _frame(*worlds["profile"])
    e = f[f["query"].notna() & f["engaged"]]
    assert (e["occ"] == e["target"]).mean() > 0.7


@pytest.mark.parametrize("rows", [5, 40])
def test_adjacent_occupations_share_the_most_skills(rows: int) -> None:
    prof = occupation_skill_profiles()[:rows]
    adj = adjacent_occupations(prof, top=3)
    assert adj.shape == (rows, 3)
    for i in range(rows):
        shared = [len(set(prof[i]) & set(prof[j])) if j != i else -1 for j in range(rows)]
        picked = [shared[j] for j in adj[i] if j >= 0]
        assert i not in adj[i]
        assert picked == sorted(picked, reverse=True)
        rest = [s for j, s in enumerate(shared) if j not in adj[i] and j != i]
        assert not picked or not rest or min(picked) >= max(rest)
        assert all(s > 0 for s in picked)


def test_bad_world_is_rejected_with_the_field_name() -> None:
    with pytest.raises(ValueError, match="world"):
        DataConfig(world="mirror")
    with pytest.raises(ValueError, match="explore_share"):
        DataConfig(explore_share=1.5)
    assert np.isclose(DataConfig().explore_share, 0.35)
