"""The ranker's features of one request's candidates: one function for training and serving.

    X = feature_matrix(request, candidates, popularity)   # float32 [N, len(FEATURES)]

``RankRequest`` is what serving knows of the request (the searched text, the member's profile
as Feast serves it, the request time); ``Candidates`` (``ebr.rank.candidates.gather``) what
retrieval found; ``popularity`` the job and company counts of ``ebr.rank.popularity`` as of
the request (Feast online at serving, ``as_of`` in training). NaN is "unknown" (an anonymous
request has no member side, a feed no query side): LightGBM learns where missing goes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from ebr.data.geo import haversine_km
from ebr.data.marketplace import SENIORITY
from ebr.index.query.fusion import DEFAULT_COMMUTE_KM
from ebr.index.query.terms import tokens
from ebr.rank.candidates import Candidates
from ebr.rank.popularity import COMPANY_FIELDS, JOB_FIELDS

TASKS = ("apply", "save", "click")  # ebr.config.TASKS order: one cosine per request head
POPULARITY_FIELDS = (*JOB_FIELDS, *COMPANY_FIELDS)
FEATURES = (
    "query_cos",  # cosine to the query embedded alone
    *(f"cos_{t}" for t in TASKS),  # cosine to the request (query + member) per task head
    "bm25",  # BM25 / the query's attainable score
    "term_coverage",  # share of the query's terms in the job's text
    "title_match",  # share of the query's terms in the job's title
    "distance_over_commute",  # km from the member's home / the member's commute radius
    "remote_fit",  # a remote job for a member open to remote
    "job_remote",
    "seniority_gap",  # job level - member level (SENIORITY index)
    "employment_fit",  # the member's preferred employment type
    "job_age_days",  # request time - posted_at
    "skill_overlap",  # share of the job's skills the member lists
    "headline_match",  # share of the job title's terms in the member's headline
    "interest_cos",  # member-interest embedding . the interest model's job embedding
    "job_ctr",  # (clicks + 1) / (impressions + 10), trailing window
    "job_apply_rate",  # (applies + 0.5) / (impressions + 10)
    "job_impressions",  # log1p
    "company_ctr",
    "company_apply_rate",
    "signed_in",
    "has_query",
)
_LEVEL = {s: float(i) for i, s in enumerate(SENIORITY)}


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return out


def _vector(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    vec = np.asarray(value, dtype=np.float32).ravel()
    return vec if len(vec) and np.isfinite(vec).all() else None


@dataclass(frozen=True)
class Member:
    """What the ranker reads of a member's profile (``member_profile`` in Feast)."""

    lat: float
    lon: float
    commute_km: float
    open_to_remote: bool
    level: float
    employment: str | None
    skills: frozenset[str]
    headline: frozenset[str]  # its terms (``ebr.index.query.terms.tokens``)
    interest: np.ndarray | None = None  # float32 [d] member-interest embedding (unit), if any

    @classmethod
    def of(cls, profile: Mapping[str, Any]) -> Member:
        skills = profile.get("skills")
        commute = _num(profile.get("max_commute_km"))
        return cls(
            _num(profile.get("lat")),
            _num(profile.get("lon")),
            commute if commute > 0 else DEFAULT_COMMUTE_KM,
            bool(profile.get("open_to_remote") or False),
            _LEVEL.get(str(profile.get("seniority")), float("nan")),
            profile.get("preferred_employment_type") or None,
            frozenset(str(s) for s in skills) if skills is not None else frozenset(),
            frozenset(tokens(str(profile.get("headline") or ""))),
            _vector(profile.get("interest")),
        )


@dataclass(frozen=True)
class RankRequest:
    """One request as the ranker sees it: the text searched (None: a feed), the member (None:
    anonymous) and the request time (UTC)."""

    query: str | None
    member: Member | None
    when: pd.Timestamp


@lru_cache(maxsize=65_536)  # titles repeat across jobs (occupation labels): one set each
def _terms(text: str) -> frozenset[str]:
    return frozenset(tokens(text))


def _title_shares(
    query: frozenset[str], headline: frozenset[str], titles: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """float [n] each: the share of the ``query``'s terms in each title, and of each title's
    terms in the member's ``headline``; NaN without query / headline / title terms."""
    title_match, headline_match = np.full(len(titles), np.nan), np.full(len(titles), np.nan)
    nq = len(query)
    for i, t in enumerate(titles):
        terms = _terms(t) if isinstance(t, str) else frozenset()
        if terms:
            if nq:
                title_match[i] = len(query & terms) / nq
            if headline:
                headline_match[i] = len(headline & terms) / len(terms)
    return title_match, headline_match


def feature_matrix(
    request: RankRequest,
    cands: Candidates,
    popularity: np.ndarray,
    job_interest: np.ndarray | None = None,
) -> np.ndarray:
    """float32 [N, len(FEATURES)] (module docstring); ``popularity`` [N, 6] holds
    POPULARITY_FIELDS per candidate (0 where nothing was counted); ``job_interest`` float32
    [N, d] each candidate's embedding by the member-interest model (NaN rows: none)."""
    n, cols = len(cands.job_ids), cands.cols
    if popularity.shape != (n, len(POPULARITY_FIELDS)):
        raise ValueError(f"popularity must be [{n}, {len(POPULARITY_FIELDS)}], "
                         f"got {popularity.shape}")  # fmt: skip
    f: dict[str, Any] = {name: np.nan for name in FEATURES}
    f["query_cos"] = cands.query_cos
    for i, task in enumerate(TASKS[: cands.heads.shape[1]]):
        f[f"cos_{task}"] = cands.heads[:, i]
    f["bm25"], f["term_coverage"] = cands.bm25, cands.coverage
    query = list(dict.fromkeys(tokens(request.query))) if request.query else []
    m = request.member
    headline = m.headline if m is not None else frozenset()
    f["title_match"], f["headline_match"] = _title_shares(frozenset(query), headline, cols.title)
    f["job_remote"] = cols.remote
    if m is not None:
        km = haversine_km(np.full(n, m.lat), np.full(n, m.lon), cols.lat, cols.lon)
        f["distance_over_commute"] = km / m.commute_km
        f["remote_fit"] = cols.remote & m.open_to_remote
        f["seniority_gap"] = cols.level - m.level
        if m.employment is not None:
            f["employment_fit"] = cols.employment == m.employment  # elementwise (object)
        if m.skills:
            f["skill_overlap"] = [
                len(m.skills.intersection(s)) / len(s) if s is not None and len(s) else np.nan
                for s in cols.skills
            ]
    if m is not None and m.interest is not None and job_interest is not None:
        if job_interest.shape == (n, len(m.interest)):
            f["interest_cos"] = job_interest @ m.interest  # NaN rows stay NaN
    f["job_age_days"] = request.when.value / 86_400e9 - cols.posted_day
    imp, clk, app, cimp, cclk, capp = popularity.astype(np.float64).T
    f["job_ctr"], f["job_apply_rate"] = (clk + 1) / (imp + 10), (app + 0.5) / (imp + 10)
    f["job_impressions"] = np.log1p(imp)
    f["company_ctr"], f["company_apply_rate"] = (cclk + 1) / (cimp + 10), (capp + 0.5) / (cimp + 10)
    f["signed_in"], f["has_query"] = float(m is not None), float(bool(query))
    out = np.empty((n, len(FEATURES)), dtype=np.float32)
    for j, name in enumerate(FEATURES):
        out[:, j] = f[name]
    return out
