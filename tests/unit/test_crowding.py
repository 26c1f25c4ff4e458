"""Crowding with backfill against brute force: the cap holds on every page, and a page is
short only when no page of k exists under the caps."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ebr.rank.crowding import Caps, crowd


def _feasible(sel: tuple[int, ...], comp: list[str], city: list[str], caps: Caps) -> bool:
    for groups, cap in ((comp, caps.max_per_company), (city, caps.max_per_city)):
        if cap is None:
            continue
        counts: dict[str, int] = {}
        for i in sel:
            counts[groups[i]] = counts.get(groups[i], 0) + 1
        if max(counts.values(), default=0) > cap:
            return False
    return True


def _best_size(n: int, comp: list[str], city: list[str], caps: Caps, k: int) -> int:
    for size in range(min(k, n), 0, -1):
        if any(_feasible(s, comp, city, caps) for s in itertools.combinations(range(n), size)):
            return size
    return 0


def _instance(rng: np.random.Generator) -> tuple[np.ndarray, list[str], list[str], int, Caps]:
    n = int(rng.integers(0, 11))
    comp = [f"c{x}" for x in rng.integers(0, int(rng.integers(1, 5)), n)]
    city = [f"t{x}" for x in rng.integers(0, int(rng.integers(1, 5)), n)]
    kind = rng.integers(0, 3)
    caps = Caps(
        max_per_company=int(rng.integers(1, 4)) if kind in (0, 2) else None,
        max_per_city=int(rng.integers(1, 4)) if kind in (1, 2) else None,
    )
    return rng.permutation(n).astype(np.int64), comp, city, int(rng.integers(1, 8)), caps


def test_randomised_against_brute_force() -> None:
    rng = np.random.default_rng(7)
    violations = short_pages = 0
    for _ in range(3000):
        order, comp, city, k, caps = _instance(rng)
        page = crowd(order, comp, city, k, caps)
        picked = tuple(page.picked.tolist())
        assert len(set(picked)) == len(picked) <= k
        assert set(picked) <= set(order.tolist())
        violations += not _feasible(picked, comp, city, caps)
        best = _best_size(len(order), comp, city, caps, k)
        short_pages += len(picked) < best
        assert page.short == (len(picked) < k)
        # the page keeps the ranked order of what it holds
        rank = {int(i): r for r, i in enumerate(order.tolist())}
        assert [rank[i] for i in picked] == sorted(rank[i] for i in picked)
    assert (violations, short_pages) == (0, 0)


def test_company_cap_alone_is_the_greedy_best_page() -> None:
    """One cap: each result is the best candidate the cap still admits (lexicographically
    best page by rank, checked by enumeration)."""
    rng = np.random.default_rng(11)
    for _ in range(500):
        order, comp, city, k, _ = _instance(rng)
        caps = Caps(max_per_company=int(rng.integers(1, 3)))
        page = crowd(order, comp, city, k, caps)
        rank = {int(i): r for r, i in enumerate(order.tolist())}
        size = _best_size(len(order), comp, city, caps, k)
        best = min(
            (
                sorted(rank[i] for i in s)
                for s in itertools.combinations(range(len(order)), size)
                if _feasible(s, comp, city, caps)
            ),
            default=[],
        )
        assert [rank[i] for i in page.picked.tolist()] == best


def test_crowded_out_and_backfill() -> None:
    comp = ["A", "A", "A", "B", "A", "C"]
    city = ["x"] * 6
    page = crowd(np.arange(6), comp, city, 3, Caps(max_per_company=2))
    assert page.picked.tolist() == [0, 1, 3]
    assert page.crowded_out.tolist() == [2]
    assert not page.short
    assert crowd(np.arange(6), comp, city, 5, Caps(max_per_company=1)).short  # A, B, C only


def test_both_caps_need_a_swap() -> None:
    """Greedy takes job 0 (company A, city x); the only page of 2 under caps 1/1 is jobs 1
    and 2 (A, y) and (B, x): the augmenting path swaps."""
    comp, city = ["A", "A", "B"], ["x", "y", "x"]
    page = crowd(np.arange(3), comp, city, 2, Caps(max_per_company=1, max_per_city=1))
    assert sorted(page.picked.tolist()) == [1, 2]


def test_nulls_are_their_own_group_and_no_caps_is_the_order() -> None:
    comp = [None, None, float("nan"), "", "A"]
    page = crowd(np.arange(5), comp, ["x"] * 5, 5, Caps(max_per_company=1))
    assert page.picked.tolist() == [0, 1, 2, 3, 4]
    assert crowd(np.array([3, 1]), comp, ["x"] * 5, 5, Caps()).picked.tolist() == [3, 1]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_caps_name_the_field(bad: object) -> None:
    with pytest.raises(ValueError, match="max_per_company"):
        Caps(max_per_company=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_per_city"):
        Caps(max_per_city=bad)  # type: ignore[arg-type]
