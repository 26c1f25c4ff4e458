"""The members a signed-in evaluation sends its queries with, and how well a result page fits
them (``ebr.eval.signed_in``): personal fit is what the generator's hidden utility rewards
besides the occupation (distance within the commute radius or remote, seniority)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ebr.data.geo import haversine_km
from ebr.data.marketplace import SENIORITY, TITLE_PREFIX
from ebr.eval.signed_in_path import Catalogue, seniority_levels
from ebr.text import words


def draw_members(members: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` members (seeded) from distinct cities and distinct headline occupations (the
    headline without its seniority prefix) while there are such; then any others."""
    if not 1 <= n <= len(members):
        raise ValueError(f"n must be in [1, {len(members)}] (members), got {n}")
    order = np.random.default_rng(seed).permutation(len(members))
    prefix = dict(zip(SENIORITY, TITLE_PREFIX, strict=True))
    occupation = [
        " ".join(words(h[len(prefix.get(s, "")) :] if h.startswith(prefix.get(s, "")) else h))
        for h, s in zip(members["headline"], members["seniority"], strict=True)
    ]
    picked: list[int] = []
    cities: set[str] = set()
    occupations: set[str] = set()
    for i in order:
        city = f"{members['city'].iloc[i]}, {members['country'].iloc[i]}"
        if city not in cities and occupation[i] not in occupations:
            picked.append(int(i))
            cities.add(city)
            occupations.add(occupation[i])
            if len(picked) == n:
                break
    chosen = set(picked)
    picked += [int(i) for i in order if int(i) not in chosen][: n - len(picked)]
    return members.iloc[picked].reset_index(drop=True)


def personal_fit(cat: Catalogue, top: np.ndarray, panel: pd.DataFrame) -> pd.DataFrame:
    """Per request: ``fit`` = share of its returned jobs (``top`` ids int64 [r, k], -1 pads)
    within the member's commute radius (haversine <= max_commute_km) or remote when the member
    is open to remote; ``seniority_gap`` = mean |index difference| over ``SENIORITY``. Row r is
    judged for ``panel`` row r (a frame of r member rows). NaN where nothing was returned."""
    if len(top) != len(panel):
        raise ValueError(f"{len(top)} result lists for {len(panel)} members")
    rows = cat.rows(top)
    got = rows >= 0
    a = cat.attrs.iloc[np.maximum(rows, 0).ravel()]
    shape = rows.shape
    lat, lon = (panel[c].to_numpy(np.float64)[:, None] for c in ("lat", "lon"))
    km = haversine_km(
        lat, lon, a["lat"].to_numpy().reshape(shape), a["lon"].to_numpy().reshape(shape)
    )
    near = km <= panel["max_commute_km"].to_numpy(np.float64)[:, None]
    remote = a["remote"].to_numpy().reshape(shape) & panel["open_to_remote"].to_numpy(bool)[:, None]
    gap = np.abs(
        a["seniority"].to_numpy().reshape(shape) - seniority_levels(panel["seniority"])[:, None]
    )
    n = got.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        fit = np.where(n > 0, ((near | remote) & got).sum(1) / n, np.nan)
        seniority_gap = np.where(n > 0, (gap * got).sum(1) / n, np.nan)
    return pd.DataFrame({"fit": fit, "seniority_gap": seniority_gap})


def session_intents(held: pd.DataFrame, sessions: pd.Series) -> np.ndarray:
    """The ``intent`` of each search session (object [n]): 'profile' where the log has no
    intent column (an old world) or the session none."""
    if "intent" not in held.columns:
        return np.full(len(sessions), "profile", dtype=object)
    first = held.dropna(subset=["intent"]).groupby("session_id")["intent"].first()
    return sessions.map(first).fillna("profile").astype(str).to_numpy(object)
