"""Both towers read text the same normalised way, a query with no known word is recognisable,
and every nullable field featurizes as "missing" instead of raising."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ebr.config import ModelConfig
from ebr.model.features import job_tensors, profile_nums, request_tensors, text_ids
from ebr.text import Vocabulary, normalize, words


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("ｓｏｆｔｗａｒｅ ｄｅｖｅｌｏｐｅｒ", ["software", "developer"]),  # fullwidth
        ("Software\u200bDeveloper", ["softwaredeveloper"]),  # zero-width space joins
        ("soft\u00adware developer", ["software", "developer"]),  # soft hyphen
        ("Café MANAGER", ["cafe", "manager"]),  # accents and case
        ("Straße", ["strasse"]),  # case folding, not just lower()
        ("ﬁnance oﬃcer", ["finance", "officer"]),  # ligatures
        ("nurse_practitioner", ["nurse", "practitioner"]),
        ("🚀🚀", []),
        ("\u200b", []),
        ("", []),
    ],
)
def test_words_normalise_what_people_type(typed: str, expected: list[str]) -> None:
    assert words(typed) == expected


def test_query_and_catalogue_hash_alike() -> None:
    assert (text_ids("ＮＵＲＳＥ", 16, 4096) == text_ids("nurse", 16, 4096)).all()
    assert (text_ids("Crèche worker", 16, 4096) == text_ids("creche WORKER", 16, 4096)).all()
    assert normalize("Ａ") == "a"


def test_vocabulary_splits_known_and_unknown(tmp_path) -> None:
    vocab = Vocabulary.of(["Registered nurse", "Software developer", None])
    assert vocab.split("ｓｏｆｔｗａｒｅ ｅｎｇｉｎｅｅｒ") == (["software"], ["engineer"])
    for nothing in ("🙂", "ممرضة", "\u200b", "!!!"):
        assert vocab.split(nothing)[0] == []
    vocab.save(tmp_path / "vocab.txt")
    assert Vocabulary.load(tmp_path / "vocab.txt") == vocab


CFG = ModelConfig(interest_dim=0)
JOB = {
    "job_id": 1,
    "title": "Nurse",
    "description": "Cares for patients",
    "skills": ["care"],
    "company": "Acme",
    "industry": "Health",
    "seniority": "mid",
    "employment_type": "full_time",
    "city": "Berlin",
    "country": "DE",
    "lat": 52.5,
    "lon": 13.4,
    "remote": False,
    "active": True,
}


@pytest.mark.parametrize(
    "nulls",
    [
        {"lat": None, "lon": None},
        {"lat": math.nan, "lon": math.nan},
        {"description": None, "skills": None},
        {"description": math.nan, "skills": math.nan},
        {"company": None, "city": math.nan, "country": None, "industry": None},
    ],
)
def test_a_job_with_null_fields_featurizes(nulls: dict) -> None:
    base = job_tensors(JOB, CFG)
    got = job_tensors({**JOB, **nulls}, CFG)
    assert all(np.isfinite(v).all() for v in got.values())
    if "lat" in nulls:
        assert got["nums"][3] == 0.0 and base["nums"][3] == 1.0  # has_location flag
        assert (got["nums"][:3] == 0).all()
    if "city" in nulls:
        assert got["cats"][4] == 0  # the "missing" id, not a hash of "nan"


@pytest.mark.parametrize(
    "nulls",
    [
        {"lat": None, "lon": None},
        {"lat": math.nan, "lon": math.nan},
        {"open_to_remote": None, "max_commute_km": None},
        {"max_commute_km": math.nan, "headline": None, "skills": None},
        {"seniority": None, "city": None, "country": None, "preferred_employment_type": None},
    ],
)
def test_a_member_with_null_fields_featurizes(nulls: dict) -> None:
    member = {
        "headline": "Nurse",
        "skills": ["care"],
        "seniority": "mid",
        "city": "Berlin",
        "country": "DE",
        "lat": 52.5,
        "lon": 13.4,
        "open_to_remote": True,
        "max_commute_km": 30.0,
        "preferred_employment_type": "full_time",
    }
    nums = profile_nums({**member, **nulls})
    assert nums.shape == (6,) and np.isfinite(nums).all()
    if "lat" in nulls:
        assert nums[3] == 0.0 and profile_nums(member)[3] == 1.0
    req = request_tensors("nurse", {**member, **nulls}, CFG)
    assert all(np.isfinite(v).all() for v in req.values())
