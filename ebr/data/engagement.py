"""The marketplace's ground truth: hidden member/job state, utility, and the engagement log.

``ebr.data.marketplace`` draws the visible tables and this hidden state; ``impressions``
simulates sessions shown by an incumbent ranker and the member's engagement (the preference
model documented in the marketplace module). ``ebr.data.oracle`` ranks by ``utility``;
``ebr.data.replay`` integrates the same ``funnel`` over the noise to score any shown list.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ebr.config import DataConfig
from ebr.data.geo import haversine_km

OUTCOMES = ("none", "click", "save", "apply")
LOG_END = pd.Timestamp("2026-11-01T00:00:00Z")
# The engagement funnel (``funnel``): constants the simulator draws with and the replay reads.
NOISE = 0.8  # scale of the Gumbel noise on utility: the member's taste no column shows
SLOPE, CLICK_AT, APPLY_AT = 2.0, 2.2, 3.6  # P(click), P(apply | click): sigmoid(SLOPE (u - AT))
SAVE_P = 0.3  # a click that is not an apply is a save with this probability


@dataclass(frozen=True)
class Hidden:
    """The generator's private state: what the preference model sees (never written out)."""

    j_occ: np.ndarray
    j_sen: np.ndarray
    j_city: np.ndarray
    j_remote: np.ndarray
    j_emp: np.ndarray
    j_sk: np.ndarray
    j_active: np.ndarray
    m_target: np.ndarray
    m_current: np.ndarray
    m_sk: np.ndarray
    m_sen: np.ndarray
    m_city: np.ndarray
    m_remote_ok: np.ndarray
    m_commute: np.ndarray
    m_emp: np.ndarray
    city_lat: np.ndarray
    city_lon: np.ndarray


def utility(h: Hidden, mem: np.ndarray, job: np.ndarray) -> np.ndarray:
    """Noise-free utility of job rows ``job`` (0-based) for member rows ``mem``: float [n]."""
    overlap = (h.j_sk[job][:, :, None] == h.m_sk[mem][:, None, :]).any(axis=2).mean(axis=1)
    dist = haversine_km(
        h.city_lat[h.m_city[mem]],
        h.city_lon[h.m_city[mem]],
        h.city_lat[h.j_city[job]],
        h.city_lon[h.j_city[job]],
    )
    remote_fit = h.j_remote[job] & h.m_remote_ok[mem]
    return (
        3.0 * overlap
        + 2.0 * (h.j_occ[job] == h.m_target[mem])
        + 0.8 * (h.j_occ[job] == h.m_current[mem])
        - 0.7 * np.abs(h.m_sen[mem].astype(np.int16) - h.j_sen[job])
        - 1.5 * np.where(remote_fit, 0.0, np.log1p(dist / h.m_commute[mem]))
        + 0.6 * remote_fit
        + 0.3 * (h.j_emp[job] == h.m_emp[mem])
    )


def funnel(
    u: np.ndarray, gumbel: np.ndarray, position: np.ndarray, active: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The engagement funnel of jobs with utility ``u`` shown at 0-based ``position`` (0 = top):
    P(examined), float32 [n], 1 / sqrt(1 + position) and 0 for an inactive job (never
    engaged); P(click | examined) and P(apply | click), float64 shaped like
    ``u + NOISE * gumbel`` (e.g. [n] for one draw, [n, nodes] to integrate over the noise).
    Float32 because the simulator's int16 positions gave it: the seeded tables depend on it."""
    p_seen = active * (np.float32(1) / np.sqrt(np.float32(1) + position.astype(np.float32)))
    noisy = u + NOISE * gumbel
    return p_seen, _sigmoid(SLOPE * (noisy - CLICK_AT)), _sigmoid(SLOPE * (noisy - APPLY_AT))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))  # not scipy's expit: its last bit may differ, and tables with it


def _queries(
    rng: np.random.Generator,
    target: np.ndarray,
    occ_label: np.ndarray,
    skill_label: np.ndarray,
    profiles: np.ndarray,
) -> np.ndarray:
    """Search text a member would type: the target title, a shortened title, or a skill."""
    kind = rng.random(len(target))
    full = occ_label[target]
    short = np.array([" ".join(t.split()[-2:]) for t in full], dtype=object)
    skill = skill_label[profiles[target, rng.integers(0, 4, len(target))]]
    return np.where(kind < 0.5, full, np.where(kind < 0.8, short, skill)).astype(object)


def simulate_impressions(
    rng: np.random.Generator,
    cfg: DataConfig,
    h: Hidden,
    occ_label: np.ndarray,
    skill_label: np.ndarray,
    profiles: np.ndarray,
) -> pd.DataFrame:
    n_jobs, n_mem, k = len(h.j_occ), len(h.m_target), cfg.shown_per_session
    n_sess = max(1, int(n_mem * cfg.sessions_per_member))
    s_mem = rng.integers(0, n_mem, n_sess)
    s_time = (
        LOG_END
        - pd.Timedelta(days=cfg.days)
        + pd.to_timedelta(np.sort(rng.integers(0, cfg.days * 86400, n_sess)), unit="s")
    )
    s_search = rng.random(n_sess) < cfg.search_fraction
    s_query = _queries(rng, h.m_target[s_mem], occ_label, skill_label, profiles)
    s_query[~s_search] = None  # JYMBII feed sessions carry no query

    # Jobs grouped by occupation and by city, to draw the incumbent system's candidates.
    by_occ = np.argsort(h.j_occ, kind="stable")
    occ_start = np.searchsorted(h.j_occ[by_occ], np.arange(len(occ_label) + 1))
    by_city = np.argsort(h.j_city, kind="stable")
    city_start = np.searchsorted(h.j_city[by_city], np.arange(len(h.city_lat) + 1))

    def pick(group_sorted: np.ndarray, start: np.ndarray, g: np.ndarray) -> np.ndarray:
        lo, hi = start[g], start[g + 1]
        empty = hi == lo
        r = lo + (rng.random(len(g)) * np.maximum(hi - lo, 1)).astype(np.int64)
        return np.where(
            empty, rng.integers(0, n_jobs, len(g)), group_sorted[np.minimum(r, n_jobs - 1)]
        )

    mem = np.repeat(s_mem, k)
    src = rng.random(len(mem))
    cand = np.where(
        src < 0.45,
        pick(by_occ, occ_start, h.m_target[mem]),
        np.where(
            src < 0.6,
            pick(by_occ, occ_start, h.m_current[mem]),
            np.where(
                src < 0.8,
                pick(by_city, city_start, h.m_city[mem]),
                rng.integers(0, n_jobs, len(mem)),
            ),
        ),
    )
    u = np.empty(len(mem), dtype=np.float64)
    step = 2_000_000  # bounded memory for the [rows, 6, 10] skill comparison at 1M jobs
    for a in range(0, len(mem), step):
        u[a : a + step] = utility(h, mem[a : a + step], cand[a : a + step])
    gumbel = rng.gumbel(size=len(u))  # drawn before the ranker's noise: the seed's draw order
    # The incumbent ranker orders the page by a noisier view of the same utility.
    order = np.argsort(-(u + 1.5 * rng.normal(size=len(u))).reshape(n_sess, k), axis=1)
    position = np.empty((n_sess, k), dtype=np.int16)
    np.put_along_axis(position, order, np.arange(k, dtype=np.int16)[None, :], axis=1)
    pos_flat = position.ravel()
    p_examined, p_click, p_apply = funnel(u, gumbel, pos_flat, h.j_active[cand])
    # One uniform draw per stage, examined first: reordering them changes the seeded tables.
    click = (rng.random(len(u)) < p_examined) & (rng.random(len(u)) < p_click)
    apply = click & (rng.random(len(u)) < p_apply)
    save = click & ~apply & (rng.random(len(u)) < SAVE_P)
    outcome = np.where(apply, 3, np.where(save, 2, np.where(click, 1, 0))).astype(np.int8)
    sess = np.repeat(np.arange(n_sess, dtype=np.int64), k)
    return pd.DataFrame(
        {
            "impression_id": np.arange(1, len(u) + 1, dtype=np.int64),
            "session_id": sess + 1,
            "member_id": (mem + 1).astype(np.int64),
            "query": pd.array(s_query[sess], dtype="string"),
            "job_id": (cand + 1).astype(np.int64),
            "position": pos_flat,
            "outcome": pd.Categorical.from_codes(outcome, categories=list(OUTCOMES)),
            "ts": s_time[sess] + pd.to_timedelta(pos_flat.astype(np.int64) * 5, unit="s"),
        }
    )
