"""Replay the simulated engagement on any list of shown jobs, from the written tables alone.

The marketplace's engagement model (``ebr.data.engagement``: ``utility`` and the ``funnel``)
needs the generator's hidden state, which is not stored; ``hidden_from_tables`` rebuilds it
from ``jobs.parquet`` and ``members.parquet``, which show every hidden attribute but the
member's target occupation (inferred from the skills the generator drew from its profile) and
which skill a label names (~10% of ESCO labels name several). On generated marketplaces over
99% of (member, job) utilities equal the generator's (``tests/unit/test_ab_report.py``).
``engagement_probabilities`` then gives each shown (member, job, position) its expected click
and apply, the funnel averaged over the Gumbel noise by quadrature (``ebr.release.ab_report``
scores the lists an A/B experiment's arms served with it).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from ebr.data.engagement import Hidden, funnel, search_utility, utility
from ebr.data.esco import load_occupations, load_skills, occupation_skill_profiles
from ebr.data.marketplace import EMPLOYMENT, SENIORITY, TITLE_PREFIX

NODES = 512  # Gumbel quantile nodes: the expectation over the noise, to ~3e-4
_GUMBEL = -np.log(-np.log((np.arange(NODES) + 0.5) / NODES))


def engagement_probabilities(
    h: Hidden,
    mem: np.ndarray,
    job: np.ndarray,
    position: np.ndarray,
    match: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """P(click) and P(apply), float [n] each, of job rows ``job`` shown to member rows ``mem``
    at 0-based ``position`` (0 = top slot), under the generator's model (noise integrated).
    ``match`` (float [n]: 1 / 0 the job matches the typed query, NaN for a feed) scores a
    search's rows with ``search_utility`` (what was typed decides, as in the intent world)."""
    p_click, p_apply = np.empty(len(mem)), np.empty(len(mem))
    for a in range(0, len(mem), 20_000):  # bounded memory: [rows, NODES] floats per step
        s = slice(a, a + 20_000)
        u = utility(h, mem[s], job[s])
        if match is not None:
            m = match[s]
            typed = ~np.isnan(m)
            if typed.any():
                searched = search_utility(h, mem[s][typed], job[s][typed], m[typed] > 0)
                u[typed] = searched
        u = u[:, None]
        seen, click, apply = funnel(u, _GUMBEL[None, :], position[s], h.j_active[job[s]])
        p_click[s] = seen * click.mean(axis=1)
        p_apply[s] = seen * (click * apply).mean(axis=1)
    return p_click, p_apply


class QueryMatches:
    """Which jobs of a table match a typed query, read from its words as the generator wrote
    them: an occupation's label (its jobs), the last two words of labels (each such
    occupation's jobs) or a skill's label (the jobs listing it); other text matches the jobs
    whose title holds all its words (``ebr.text.words``)."""

    def __init__(self, jobs: pd.DataFrame) -> None:
        from ebr.text import words

        labels = load_occupations().set_index("uri")["label"].str.lower()
        occ = jobs["occupation_uri"].map(labels).fillna("").to_numpy(object)
        self._label: dict[str, list[int]] = {}
        self._short: dict[str, list[int]] = {}
        for row, label in enumerate(occ):
            self._label.setdefault(label, []).append(row)
            self._short.setdefault(" ".join(label.split()[-2:]), []).append(row)
        self._skill: dict[str, list[int]] = {}
        for row, skills in enumerate(jobs["skills"]):
            for sk in {str(x).lower() for x in (skills if skills is not None else [])}:
                self._skill.setdefault(sk, []).append(row)
        self._titles = [frozenset(words(str(t))) for t in jobs["title"]]
        self._words = words
        self.n = len(jobs)

    def __call__(self, query: str) -> np.ndarray:
        """bool [n]: the table's rows that match ``query``."""
        q = " ".join(str(query).lower().split())
        out = np.zeros(self.n, dtype=bool)
        rows = self._label.get(q) or self._short.get(q) or self._skill.get(q)
        if rows:
            out[rows] = True
            return out
        wanted = frozenset(self._words(q))
        if wanted:
            out[:] = [wanted <= t for t in self._titles]
        return out


def _codes(values: pd.Series, categories: tuple[str, ...], what: str) -> np.ndarray:
    codes = pd.Categorical(values, categories=list(categories)).codes
    if (codes < 0).any():
        raise ValueError(f"{what} must be one of {categories}, got {set(values[codes < 0])}")
    return codes.astype(np.int8)


def _skill_codes(
    lists: pd.Series, contexts: list[set[int]], by_label: dict[str, list[int]], fresh: int
) -> tuple[np.ndarray, int]:
    """int64 [rows, width] ESCO skill indices of the label lists, and the last code used. A
    label several skills share (~10% of skills) is resolved by the row's context profile."""
    width = len(lists.iat[0]) if len(lists) else 0
    out = np.empty((len(lists), width), np.int64)
    for r, (labels, context) in enumerate(zip(lists, contexts, strict=True)):
        for k, label in enumerate(labels):
            cands = by_label.get(str(label), [])
            if len(cands) > 1:  # the row's profile's skill (the first if it has several)
                cands = [i for i in cands if i in context]
            if cands:
                out[r, k] = min(cands)
            else:  # drawn at random among them (or a label ESCO lacks): a code of its own
                fresh -= 1
                out[r, k] = fresh
    return out, fresh


def hidden_from_tables(jobs: pd.DataFrame, members: pd.DataFrame) -> Hidden:
    """The generator's hidden state for ``jobs`` x ``members`` (row i = the table's row i),
    rebuilt from the visible columns. Occupation codes index the jobs' occupations (-1: one
    no job has, which never matches); a member's target is the job occupation whose skill
    profile holds its first five skills (its current one, from the headline, on a tie)."""
    if jobs["skills"].map(len).nunique() > 1 or members["skills"].map(len).nunique() > 1:
        raise ValueError("the replay needs the generator's fixed-length skill lists")
    table, profiles, skill_labels = load_occupations(), occupation_skill_profiles(), load_skills()
    row = dict(zip(table["uri"], range(len(table)), strict=True))
    occs = sorted(set(jobs["occupation_uri"]))
    if missing := [u for u in occs if u not in row]:
        raise ValueError(f"jobs name occupations that are not ESCO's: {missing[:5]}")
    labels = skill_labels["label"].to_numpy().astype(str)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    prof = [set(profiles[row[u]].tolist()) for u in occs]
    pos: list[dict[str, int]] = [{} for _ in occs]  # label -> first profile position
    has: dict[str, list[int]] = {}  # label -> occupations whose profile has it
    by_title: dict[str, list[int]] = {}
    for o, uri in enumerate(occs):
        for p, label in enumerate(labels[profiles[row[uri]]]):
            if pos[o].setdefault(label, p) == p:
                has.setdefault(label, []).append(o)
        by_title.setdefault(str(table["label"].iat[row[uri]]).lower(), []).append(o)
    m_sen = _codes(members["seniority"], SENIORITY, "member seniority")
    current, target = np.full(len(members), -1), np.full(len(members), -1)
    for i, (headline, sk) in enumerate(zip(members["headline"], members["skills"], strict=True)):
        sk = [str(s) for s in sk]  # 5 from the target's profile, 3 from the current's, 2 any
        title = str(headline)[len(TITLE_PREFIX[m_sen[i]]) :].lower()
        if cands := by_title.get(title, []):  # a shared title: the one skills 5-8 fit best
            current[i] = max(cands, key=lambda o: (sum(s in pos[o] for s in sk[5:8]), -o))
        hits = Counter(o for s in set(sk[:5]) for o in has.get(s, []))
        full = sorted(o for o, k in hits.items() if k == len(set(sk[:5])))
        if current[i] in full:  # most members look for the occupation they hold
            target[i] = current[i]
        elif full:  # earlier profile entries are likelier picks
            target[i] = min(full, key=lambda o: sum(pos[o][s] for s in sk[:5]))
    j_occ = jobs["occupation_uri"].map({u: i for i, u in enumerate(occs)}).to_numpy(np.int32)
    j_sk, fresh = _skill_codes(jobs["skills"], [prof[o] for o in j_occ], by_label, 0)
    m_context = [(prof[t] if t >= 0 else set()) | (prof[c] if c >= 0 else set())
                 for t, c in zip(target, current, strict=True)]  # fmt: skip
    m_sk, _ = _skill_codes(members["skills"], m_context, by_label, fresh)
    cities = pd.concat([jobs[["lat", "lon"]], members[["lat", "lon"]]]).drop_duplicates()
    city = {xy: i for i, xy in enumerate(zip(cities["lat"], cities["lon"], strict=True))}

    def city_of(df: pd.DataFrame) -> np.ndarray:
        return np.array([city[xy] for xy in zip(df["lat"], df["lon"], strict=True)], dtype=int)

    return Hidden(
        j_occ=j_occ,
        j_sen=_codes(jobs["seniority"], SENIORITY, "job seniority"),
        j_city=city_of(jobs),
        j_remote=jobs["remote"].to_numpy(bool),
        j_emp=_codes(jobs["employment_type"], EMPLOYMENT, "job employment_type"),
        j_sk=j_sk,
        j_active=jobs["active"].to_numpy(bool),
        m_target=target.astype(np.int32),
        m_current=current.astype(np.int32),
        m_sk=m_sk,
        m_sen=m_sen,
        m_city=city_of(members),
        m_remote_ok=members["open_to_remote"].to_numpy(bool),
        m_commute=members["max_commute_km"].to_numpy(float),
        m_emp=_codes(members["preferred_employment_type"], EMPLOYMENT, "member employment"),
        city_lat=cities["lat"].to_numpy(float),
        city_lon=cities["lon"].to_numpy(float),
    )
