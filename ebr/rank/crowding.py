"""Crowding: at most ``max_per_company`` (and ``max_per_city``) results of one company (city)
on a page, the page backfilled from further candidates.

    page = crowd(order, companies, cities, k=10, caps=Caps(max_per_company=2))

``order`` is the ranked candidates, best first. A candidate whose company (city) already
fills its cap is crowded out and the next candidate takes its place, so the cap holds on the
final page and the page is as full as the candidates allow:

- company cap alone (one partition matroid): the greedy walk down ``order`` picks the best
  page there is, each result the best candidate the cap still admits;
- both caps (the intersection of two partition matroids, a bipartite b-matching of companies
  and cities): the greedy page, then augmenting paths (a job in, possibly one swapped for
  another of the same city) until the page holds k or no larger page exists under the caps.

``Page.short`` says fewer than k came back although the candidates may not be all there is:
the caller retrieves deeper (``serving``) when its retrieval was full. A null company or city
is a group of its own per candidate (nothing to crowd it with).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Caps:
    """Results allowed per company and per city on one page (None: no cap)."""

    max_per_company: int | None = None
    max_per_city: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_per_company", "max_per_city"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be an integer >= 1 or null, got {v!r}")

    @property
    def active(self) -> bool:
        return self.max_per_company is not None or self.max_per_city is not None


@dataclass(frozen=True)
class Page:
    """One crowded page: ``picked`` candidate indices in page order (their order in
    ``order``), ``crowded_out`` the candidates a cap skipped that rank above the page's last
    result, and ``short``: fewer than k picked."""

    picked: np.ndarray  # int64 [<= k]
    crowded_out: np.ndarray  # int64
    short: bool


def _groups(values: Sequence[object] | np.ndarray, n: int) -> np.ndarray:
    """int64 [n] group codes of ``values``; a null (None, NaN, '') gets a code of its own."""
    codes = np.empty(n, dtype=np.int64)
    seen: dict[object, int] = {}
    fresh = -1
    for i, v in enumerate(values):
        if v is None or v == "" or (isinstance(v, float) and v != v):
            codes[i], fresh = fresh, fresh - 1  # negative: unique, never shared
        else:
            codes[i] = seen.setdefault(v, len(seen))
    return codes


def crowd(
    order: np.ndarray,
    companies: Sequence[object] | np.ndarray,
    cities: Sequence[object] | np.ndarray,
    k: int,
    caps: Caps,
) -> Page:
    """The page of ``k`` from candidates ``order`` (int64 indices into ``companies`` /
    ``cities``, best first) under ``caps`` (module docstring)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    order = np.asarray(order, dtype=np.int64)
    if not caps.active:
        return Page(order[:k].copy(), np.empty(0, np.int64), len(order) < k)
    n = len(companies)
    if len(cities) != n:
        raise ValueError(f"{n} companies but {len(cities)} cities")
    comp, city = _groups(companies, n), _groups(cities, n)
    c_cap = caps.max_per_company or n + 1
    t_cap = caps.max_per_city or n + 1
    c_used: dict[int, int] = {}
    t_used: dict[int, int] = {}
    picked: list[int] = []
    skipped: list[int] = []
    for i in order.tolist():
        if len(picked) == k:
            break
        c, t = int(comp[i]), int(city[i])
        if c_used.get(c, 0) < c_cap and t_used.get(t, 0) < t_cap:
            picked.append(i)
            c_used[c] = c_used.get(c, 0) + 1
            t_used[t] = t_used.get(t, 0) + 1
        else:
            skipped.append(i)
    if len(picked) < k and caps.max_per_company is not None and caps.max_per_city is not None:
        picked = _augment(order, comp, city, picked, k, c_cap, t_cap)
    rank = {int(i): r for r, i in enumerate(order.tolist())}
    page = sorted(picked, key=rank.__getitem__)
    last, on_page = (rank[page[-1]] if page else -1), set(page)
    out = [i for i in skipped if rank[i] < last and i not in on_page]
    return Page(np.array(page, np.int64), np.array(out, np.int64), len(page) < k)


def _augment(
    order: np.ndarray,
    comp: np.ndarray,
    city: np.ndarray,
    picked: list[int],
    k: int,
    c_cap: int,
    t_cap: int,
) -> list[int]:
    """Grow ``picked`` by augmenting paths of the company -> job -> city flow until it holds
    k or none exists (then no page under both caps is larger). A path enters at a company
    with room, takes an unpicked job to its city, and while that city is full leaves it
    through a picked job of that city (dropped) to the job's company, and on."""
    chosen = set(picked)
    cands = order.tolist()
    while len(chosen) < k:
        c_used = _counts(comp, chosen)
        t_used = _counts(city, chosen)
        # BFS over companies; an edge company -> city is an unpicked job, city -> company a
        # picked one (reversed). Candidates are tried best first.
        by_comp: dict[int, list[int]] = {}
        for i in cands:
            if i not in chosen:
                by_comp.setdefault(int(comp[i]), []).append(i)
        by_city_picked: dict[int, list[int]] = {}
        for i in chosen:
            by_city_picked.setdefault(int(city[i]), []).append(i)
        starts = [c for c in by_comp if c_used.get(c, 0) < c_cap]
        parent: dict[tuple[str, int], tuple[tuple[str, int] | None, int | None]] = {
            ("c", c): (None, None) for c in starts
        }
        queue = deque(("c", c) for c in starts)
        end: tuple[str, int] | None = None
        while queue and end is None:
            node = queue.popleft()
            kind, g = node
            if kind == "c":
                for i in by_comp.get(g, []):
                    nxt = ("t", int(city[i]))
                    if nxt not in parent:
                        parent[nxt] = (node, i)
                        if t_used.get(nxt[1], 0) < t_cap:
                            end = nxt
                            break
                        queue.append(nxt)
            else:
                for i in by_city_picked.get(g, []):
                    nxt = ("c", int(comp[i]))
                    if nxt not in parent:
                        parent[nxt] = (node, i)
                        queue.append(nxt)
        if end is None:
            break
        step: tuple[str, int] | None = end
        while step is not None:
            prev, job = parent[step]
            if job is not None:
                if job in chosen:
                    chosen.discard(job)
                else:
                    chosen.add(job)
            step = prev
    return list(chosen)


def _counts(groups: np.ndarray, chosen: set[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for i in chosen:
        g = int(groups[i])
        out[g] = out.get(g, 0) + 1
    return out
