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
# The intent world (DataConfig.world): what a search session is about, and what its query does.
INTENTS = ("profile", "adjacent", "career_change")  # the ``intent`` column of search sessions
ADJACENT_OF_EXPLORING = 0.6  # of the exploring sessions: adjacent occupation; the rest change
ADJACENT_TOP = 3  # an adjacent occupation is one of the 3 sharing most profile skills
MISMATCH = 3.5  # utility a search result loses when it does not match the typed query


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


def search_utility(h: Hidden, mem: np.ndarray, job: np.ndarray, match: np.ndarray) -> np.ndarray:
    """Noise-free utility of job rows ``job`` shown to member rows ``mem`` for a typed query
    (the intent world): ``utility`` with its target-occupation term moved to what was typed,
    2.0 * ``match``, and MISMATCH taken off a job that does not match the query, however well
    it fits the profile. ``match``: bool [n], the job matches the session's query."""
    on_target = h.j_occ[job] == h.m_target[mem]
    return utility(h, mem, job) + 2.0 * (match.astype(np.float64) - on_target) - MISMATCH * ~match


def adjacent_occupations(profiles: np.ndarray, top: int = ADJACENT_TOP) -> np.ndarray:
    """int64 [n_occ, top]: per occupation, the ``top`` others sharing the most skills of their
    ESCO skill profiles (ties: the lower index); -1 where fewer share any skill."""
    from scipy.sparse import csr_matrix

    n, width = profiles.shape
    _, col = np.unique(profiles, return_inverse=True)
    rows = np.repeat(np.arange(n), width)
    m = csr_matrix((np.ones(n * width), (rows, col.ravel())), shape=(n, int(col.max()) + 1))
    m.data[:] = 1.0  # a skill listed twice in a profile counts once
    shared = (m @ m.T).toarray()
    np.fill_diagonal(shared, -1.0)
    order = np.argsort(-shared, axis=1, kind="stable")[:, :top]
    best = np.take_along_axis(shared, order, axis=1)
    return np.where(best > 0, order, -1).astype(np.int64)


def _intents(
    rng: np.random.Generator,
    explore_share: float,
    target: np.ndarray,
    adjacent: np.ndarray,
    j_occ: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per session (intent code into INTENTS int8 [n], intended occupation int [n]): the profile
    target, or with ``explore_share`` an occupation explored instead: ADJACENT_OF_EXPLORING of
    those an adjacent occupation (one of the target's ``adjacent`` row), the rest a career
    change (an occupation drawn as often as it has jobs; the target itself stays profile)."""
    n = len(target)
    r = rng.random(n)
    near = adjacent[target, rng.integers(0, adjacent.shape[1], n)]
    other = j_occ[rng.integers(0, len(j_occ), n)]
    explore = r < explore_share
    is_adj = explore & (r < explore_share * ADJACENT_OF_EXPLORING) & (near >= 0)
    is_change = explore & ~is_adj & (other != target)
    occ = np.where(is_adj, near, np.where(is_change, other, target))
    return np.where(is_adj, 1, np.where(is_change, 2, 0)).astype(np.int8), occ


def _queries(
    rng: np.random.Generator,
    target: np.ndarray,
    occ_label: np.ndarray,
    skill_label: np.ndarray,
    profiles: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Search text a member would type for occupations ``target`` -> (queries, skill): the
    title (50%), its last two words (30%) or one of its four most central skills (20%; the
    skill's index, -1 for a title query)."""
    kind = rng.random(len(target))
    full = occ_label[target]
    short = np.array([" ".join(t.split()[-2:]) for t in full], dtype=object)
    skill_idx = profiles[target, rng.integers(0, 4, len(target))]
    skill = skill_label[skill_idx]
    text = np.where(kind < 0.5, full, np.where(kind < 0.8, short, skill)).astype(object)
    return text, np.where(kind < 0.8, -1, skill_idx)


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
    intent_world = cfg.world == "intent"
    s_intent, s_occ = np.zeros(n_sess, np.int8), h.m_target[s_mem]
    if intent_world:
        adjacent = adjacent_occupations(profiles)
        s_intent, s_occ = _intents(rng, cfg.explore_share, s_occ, adjacent, h.j_occ)
    s_query, s_skill = _queries(rng, s_occ, occ_label, skill_label, profiles)
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
    # The incumbent's sources: the occupation asked for (the profile target in a feed, the
    # query's in the intent world's searches), the current one, the member's city, anywhere.
    first, cut = h.m_target[mem], np.array([0.45, 0.6, 0.8])[:, None]
    searching = np.repeat(s_search, k) & intent_world
    if intent_world:
        first = np.where(searching, np.repeat(s_occ, k), first)
        cut = np.where(searching[None, :], np.array([0.6, 0.7, 0.85])[:, None], cut)
    src = rng.random(len(mem))
    cand = np.where(
        src < cut[0],
        pick(by_occ, occ_start, first),
        np.where(
            src < cut[1],
            pick(by_occ, occ_start, h.m_current[mem]),
            np.where(
                src < cut[2],
                pick(by_city, city_start, h.m_city[mem]),
                rng.integers(0, n_jobs, len(mem)),
            ),
        ),
    )
    u = np.empty(len(mem), dtype=np.float64)
    step = 2_000_000  # bounded memory for the [rows, 6, 10] skill comparison at 1M jobs
    for a in range(0, len(mem), step):
        m_, c_ = mem[a : a + step], cand[a : a + step]
        u[a : a + step] = utility(h, m_, c_)
        if intent_world:
            srch, sess_ = searching[a : a + step], np.arange(a, a + len(m_)) // k
            skill = s_skill[sess_]
            match = np.where(
                skill >= 0,
                (h.j_sk[c_] == skill[:, None]).any(axis=1),
                h.j_occ[c_] == s_occ[sess_],
            )
            u[a : a + step] = np.where(srch, search_utility(h, m_, c_, match), u[a : a + step])
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
    out = pd.DataFrame(
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
    if intent_world:  # the simulator's label of each search session (evaluation only)
        intent = np.array(INTENTS, dtype=object)[s_intent]
        intent[~s_search] = None
        out["intent"] = pd.array(intent[sess], dtype="string")
    return out
