"""Seeded synthetic job marketplace grounded in real ESCO occupations/skills and real cities.

    python -m ebr.data.marketplace --n-jobs 5000 --out var/data

Writes ``jobs.parquet``, ``members.parquet`` and ``impressions.parquet``.

Hidden preference model (the ground truth engagement follows; documented in the README):
a member *m* has a target occupation, a skill set, a seniority level, a home city, a commute
radius and a remote preference. Shown job *j*, the utility is

    u = 3.0 * skill_overlap(m, j)                      # share of j's skills m has
      + 2.0 * [occ(j) == target(m)] + 0.8 * [occ(j) == current(m)]
      - 0.7 * |seniority(m) - seniority(j)|
      - 1.5 * log1p(distance_km(m, j) / commute_km(m))  # 0 if j is remote and m accepts remote
      + 0.6 * [j remote and m accepts remote]
      + 0.3 * [employment type matches m's preference]
      + 0.8 * Gumbel noise

Search intent (``DataConfig.world = "intent"``, the default): a search session is about
one occupation, the *intent*. With probability 1 - explore_share (0.65) it is the member's
target ("profile"); otherwise the member explores: 60% of those an *adjacent* occupation (one
of the three whose ESCO skill profiles share the most skills with the target), the rest a
*career change* (an occupation drawn in proportion to its jobs). The query is typed from the
intent: its title (50%), the title's last two words (30%) or one of its four most central
skills (20%). A job *matches* the query when it is of the intent occupation (a skill query:
when it lists that skill). In a search session the target-occupation term above follows the
query instead, and a job that does not match loses 3.5:

    u_search = u - 2.0 * [occ(j) == target(m)] + 2.0 * match(q, j) - 3.5 * [not match(q, j)]

so a non-matching job is rarely engaged with however well it fits the profile, and among the
matching jobs profile fit (skills, seniority, distance / commute, remote, employment type)
decides. The incumbent shows search sessions jobs of the intent occupation (60%), of the
member's current occupation (10%), of their city (15%) and anywhere (15%). Impressions carry
the simulator's label ``intent`` (profile | adjacent | career_change; null in feeds) for the
evaluation only: no model reads it. JYMBII feed sessions (no query) are unchanged: u, and
candidates from the target (45%), current occupation (15%), city (20%), anywhere (20%).
``world = "profile"`` reproduces the generator before search intent existed, byte for byte
(every query from the target, engagement blind to it).

Engagement: the member examines position p with probability 1 / sqrt(1 + p); an examined job
is clicked with probability sigmoid(2 (u - 2.2)); a click becomes an apply with probability
sigmoid(2 (u - 3.6)), otherwise a save with probability 0.3. Inactive jobs are never engaged.
(In code, constants included: ``utility``, ``search_utility`` and ``funnel`` in
``ebr.data.engagement``.)
A model that recovers skills, title, seniority, distance and remote recovers the ground truth.

Size: the generator's entry point and its command; catalogue, members and engagement each have
their own module.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ebr.config import DataConfig
from ebr.data.engagement import LOG_END, Hidden, simulate_impressions
from ebr.data.esco import load_occupations, load_skills, occupation_skill_profiles
from ebr.data.geo import load_cities
from ebr.io import atomic_write_parquet

SENIORITY = ("entry", "mid", "senior", "lead", "director")
TITLE_PREFIX = ("Junior ", "", "Senior ", "Lead ", "Head ")
EMPLOYMENT = ("full_time", "part_time", "contract", "internship")
EMPLOYMENT_P = (0.75, 0.1, 0.12, 0.03)
INDUSTRIES = (
    "healthcare",
    "manufacturing",
    "retail",
    "finance",
    "software",
    "education",
    "logistics",
    "hospitality",
    "construction",
    "energy",
    "public sector",
    "media",
    "agriculture",
    "telecommunications",
    "consulting",
    "transport",
    "pharmaceuticals",
    "arts",
    "legal",
    "mining",
)
_CO_A = (
    "North",
    "Blue",
    "Bright",
    "Iron",
    "Silver",
    "Green",
    "Summit",
    "Harbor",
    "Pioneer",
    "Atlas",
    "Cedar",
    "Nova",
    "Union",
    "Crest",
    "Vertex",
    "Maple",
    "Orbit",
    "Granite",
)
_CO_B = (
    "Works",
    "Labs",
    "Health",
    "Systems",
    "Partners",
    "Group",
    "Logistics",
    "Foods",
    "Energy",
    "Digital",
    "Care",
    "Industries",
    "Solutions",
    "Media",
    "Capital",
    "Build",
)
JOB_SKILLS, MEMBER_SKILLS = 6, 10


@dataclass(frozen=True)
class Marketplace:
    jobs: pd.DataFrame
    members: pd.DataFrame
    impressions: pd.DataFrame


def _zipf(rng: np.random.Generator, n: int, a: float = 0.7) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** a
    return rng.permutation(w / w.sum())


def _sample_from_profile(
    rng: np.random.Generator, prof: np.ndarray, n_pick: int, n_skills: int, n_random: int
) -> np.ndarray:
    """int32 [rows, n_pick + n_random]: distinct picks from each profile row, plus random ones."""
    keys = rng.random(prof.shape)
    # Earlier profile entries are more central to the occupation: bias the pick towards them.
    keys = keys * (1 + np.arange(prof.shape[1]) / 8)
    pick = np.take_along_axis(prof, np.argsort(keys, axis=1)[:, :n_pick], axis=1)
    extra = rng.integers(0, n_skills, size=(prof.shape[0], n_random), dtype=np.int32)
    return np.concatenate([pick, extra], axis=1)


def generate(cfg: DataConfig) -> Marketplace:
    """Build the three tables in memory (vectorised; 1M jobs fits on a 24 GiB machine)."""
    return generate_with_truth(cfg)[0]


def generate_with_truth(cfg: DataConfig) -> tuple[Marketplace, Hidden]:
    """The tables plus the generator's hidden state (for ceilings such as ebr.data.oracle);
    the same seed gives the same tables as ``generate``."""
    rng = np.random.default_rng(cfg.seed)
    occ_all, skills = load_occupations(), load_skills()
    profiles_all = occupation_skill_profiles()
    cities = load_cities(cfg.n_cities)
    # Fewer occupations at small sizes keeps several jobs per occupation, as in a real market.
    n_occ = int(min(len(occ_all), max(20, cfg.n_jobs // 40)))
    occ_ids = np.sort(rng.choice(len(occ_all), n_occ, replace=False))
    occ = occ_all.iloc[occ_ids].reset_index(drop=True)
    profiles = profiles_all[occ_ids]
    occ_p = _zipf(rng, n_occ)
    city_p = cities["population"].to_numpy(float) ** 0.7
    city_p /= city_p.sum()

    n_co = cfg.n_companies or max(20, cfg.n_jobs // 50)
    co_names = np.array(
        [
            f"{_CO_A[i % len(_CO_A)]} {_CO_B[(i // len(_CO_A)) % len(_CO_B)]}"
            + ("" if i < len(_CO_A) * len(_CO_B) else f" {i // (len(_CO_A) * len(_CO_B)) + 1}")
            for i in range(n_co)
        ]
    )
    co_industry = rng.integers(0, len(INDUSTRIES), n_co)
    co_city = rng.choice(cfg.n_cities, n_co, p=city_p)

    # ---- jobs
    n = cfg.n_jobs
    j_occ = rng.choice(n_occ, n, p=occ_p).astype(np.int32)
    j_sen = rng.choice(len(SENIORITY), n, p=(0.2, 0.35, 0.3, 0.1, 0.05)).astype(np.int8)
    j_co = rng.integers(0, n_co, n)
    # 60% of a company's jobs sit at its headquarters, the rest anywhere.
    j_city = np.where(rng.random(n) < 0.6, co_city[j_co], rng.choice(cfg.n_cities, n, p=city_p))
    j_remote = rng.random(n) < 0.15
    j_emp = rng.choice(len(EMPLOYMENT), n, p=EMPLOYMENT_P).astype(np.int8)
    j_sk = _sample_from_profile(rng, profiles[j_occ], JOB_SKILLS - 1, len(skills), 1)
    posted = LOG_END - pd.to_timedelta(rng.integers(0, 60 * 86400, n), unit="s")
    occ_label = occ["label"].to_numpy()
    prefix = np.array(TITLE_PREFIX, dtype=object)[j_sen]
    titles = (prefix + pd.Series(occ_label[j_occ]).str.capitalize().to_numpy(object)).astype(str)
    skill_label = skills["label"].to_numpy()
    jobs = pd.DataFrame(
        {
            "job_id": np.arange(1, n + 1, dtype=np.int64),
            "title": titles,
            "description": occ["definition"].to_numpy()[j_occ],
            "skills": list(skill_label[j_sk]),
            "company": co_names[j_co],
            "industry": np.array(INDUSTRIES)[co_industry[j_co]],
            "seniority": np.array(SENIORITY)[j_sen],
            "employment_type": np.array(EMPLOYMENT)[j_emp],
            "city": cities["city"].to_numpy()[j_city],
            "country": cities["country"].to_numpy()[j_city],
            "lat": cities["lat"].to_numpy()[j_city],
            "lon": cities["lon"].to_numpy()[j_city],
            "remote": j_remote,
            "posted_at": posted,
            "active": rng.random(n) < 0.92,
            "occupation_uri": occ["uri"].to_numpy()[j_occ],
        }
    )

    # ---- members
    m = cfg.n_members
    m_target = rng.choice(n_occ, m, p=occ_p).astype(np.int32)
    # Most members already work in the occupation they look for; some are switching.
    m_current = np.where(rng.random(m) < 0.7, m_target, rng.choice(n_occ, m, p=occ_p)).astype(
        np.int32
    )
    m_sk = np.concatenate(
        [
            _sample_from_profile(rng, profiles[m_target], 5, len(skills), 0),
            _sample_from_profile(rng, profiles[m_current], 3, len(skills), 2),
        ],
        axis=1,
    )
    m_sen = rng.choice(len(SENIORITY), m, p=(0.25, 0.35, 0.25, 0.1, 0.05)).astype(np.int8)
    m_city = rng.choice(cfg.n_cities, m, p=city_p)
    m_remote_ok = rng.random(m) < 0.4
    m_commute = rng.choice(np.array([15.0, 30.0, 60.0, 120.0]), m)
    m_emp = rng.choice(len(EMPLOYMENT), m, p=EMPLOYMENT_P).astype(np.int8)
    m_prefix = np.array(TITLE_PREFIX, dtype=object)[m_sen]
    members = pd.DataFrame(
        {
            "member_id": np.arange(1, m + 1, dtype=np.int64),
            "headline": (
                m_prefix + pd.Series(occ_label[m_current]).str.capitalize().to_numpy(object)
            ).astype(str),
            "skills": list(skill_label[m_sk]),
            "seniority": np.array(SENIORITY)[m_sen],
            "city": cities["city"].to_numpy()[m_city],
            "country": cities["country"].to_numpy()[m_city],
            "lat": cities["lat"].to_numpy()[m_city],
            "lon": cities["lon"].to_numpy()[m_city],
            "open_to_remote": m_remote_ok,
            "max_commute_km": m_commute,
            "preferred_employment_type": np.array(EMPLOYMENT)[m_emp],
        }
    )

    hidden = Hidden(
        j_occ,
        j_sen,
        j_city,
        j_remote,
        j_emp,
        j_sk,
        jobs["active"].to_numpy(),
        m_target,
        m_current,
        m_sk,
        m_sen,
        m_city,
        m_remote_ok,
        m_commute,
        m_emp,
        cities["lat"].to_numpy(),
        cities["lon"].to_numpy(),
    )
    impressions = simulate_impressions(rng, cfg, hidden, occ_label, skill_label, profiles)
    return Marketplace(jobs=jobs, members=members, impressions=impressions), hidden


def write_marketplace(cfg: DataConfig, out_dir: Path) -> dict[str, float]:
    """Generate and write the three Parquet tables atomically; returns row counts and seconds."""
    t0 = time.perf_counter()
    mp = generate(cfg)
    for name, df in (("jobs", mp.jobs), ("members", mp.members), ("impressions", mp.impressions)):
        atomic_write_parquet(out_dir / f"{name}.parquet", df)
    return {
        "jobs": len(mp.jobs),
        "members": len(mp.members),
        "impressions": len(mp.impressions),
        "engaged": int((mp.impressions["outcome"] != "none").sum()),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def main(n_jobs: int = 5_000, out: Path = Path("var/data"), seed: int = 7) -> None:
    """CLI: write a marketplace of ``n_jobs`` jobs to ``out``."""
    print(write_marketplace(DataConfig(n_jobs=n_jobs, seed=seed), out))


if __name__ == "__main__":
    import typer

    typer.run(main)
