"""Search-time knobs of every index kind we build, set and read under one set of names.

The names are ``IndexConfig``'s, so a tuned setting can be written back into a config
(``dataclasses.replace(cfg, **params)``) or a manifest:

- ``flat``:  none (exact).
- ``ivf``:   ``nprobe`` (cells visited per query).
- ``ivfpq``: ``nprobe`` and ``refine`` (``IndexRefine.k_factor``: the compressed scan proposes
  ``refine * k`` candidates that are re-ranked exactly).
- ``hnsw``:  ``ef_search`` (``IndexHNSW.hnsw.efSearch``, the search beam width).

The indexes may come from ``build_index`` or from ``faiss.read_index`` (a loaded slot); both are
unwrapped the same way. Setting a knob mutates the index: do it before it is shared with
concurrent searches (FAISS reads these fields without locks).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import faiss

SEARCH_PARAMS: dict[str, tuple[str, ...]] = {
    "flat": (),
    "ivf": ("nprobe",),
    "ivfpq": ("nprobe", "refine"),
    "hnsw": ("ef_search",),
}


def _concrete(index: faiss.Index) -> Any:
    # Any: the most-derived SWIG type (IndexRefineFlat, IndexHNSWFlat, ...); faiss's stubs
    # type downcast_index as returning a bare Index without k_factor or hnsw.
    return faiss.downcast_index(index)


def index_kind(index: faiss.Index) -> str:
    """Which of our kinds (``SEARCH_PARAMS`` keys) ``index`` is, from its FAISS type.

    Raises:
        ValueError: an index type none of our kinds produces (e.g. a bare IVFPQ, no refine).
    """
    idx = _concrete(index)
    if isinstance(idx, faiss.IndexRefine):
        if faiss.try_extract_index_ivf(idx) is not None:
            return "ivfpq"
    elif isinstance(idx, faiss.IndexIVF):
        # Only IVF-Flat is built bare; an IVF with codes is always wrapped in a refine.
        if isinstance(idx, faiss.IndexIVFFlat):
            return "ivf"
    elif isinstance(idx, faiss.IndexHNSW):
        return "hnsw"
    elif isinstance(idx, faiss.IndexFlat):
        return "flat"
    raise ValueError(
        f"unsupported index type {type(idx).__name__}: expected one built by "
        f"ebr.index.build.faiss_index.build_index ({', '.join(SEARCH_PARAMS)})"
    )


def search_params(index: faiss.Index) -> dict[str, int]:
    """The current search knobs of ``index`` (only those its kind has; ``{}`` for flat)."""
    kind = index_kind(index)
    out: dict[str, int] = {}
    if "nprobe" in SEARCH_PARAMS[kind]:
        out["nprobe"] = int(faiss.extract_index_ivf(index).nprobe)
    if "refine" in SEARCH_PARAMS[kind]:
        k_factor = float(_concrete(index).k_factor)
        if not k_factor.is_integer():
            # Only set_search_params writes k_factor here, always from an int.
            raise ValueError(f"refine k_factor {k_factor} is not an integer")
        out["refine"] = int(k_factor)
    if "ef_search" in SEARCH_PARAMS[kind]:
        out["ef_search"] = int(_concrete(index).hnsw.efSearch)
    return out


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    # bool is an int subclass; True as an nprobe is a bug, not a 1.
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer in {bound}, got {value!r}")
    return int(value)


def set_search_params(index: faiss.Index, params: Mapping[str, Any]) -> None:
    """Apply ``params`` (a subset of the kind's knobs, see the module docstring) to ``index``.

    Args:
        index: any index our factory builds (also after ``faiss.read_index``).
        params: e.g. ``{"nprobe": 32, "refine": 8}`` for ivfpq, ``{"ef_search": 128}`` for hnsw.
            Knobs not named keep their value.

    Raises:
        ValueError: a knob this kind does not have, or a value out of range (``nprobe`` must be
            in [1, nlist], ``refine`` and ``ef_search`` >= 1). Nothing is changed then.
    """
    kind = index_kind(index)
    unknown = sorted(set(params) - set(SEARCH_PARAMS[kind]))
    if unknown:
        raise ValueError(
            f"{kind} index has no search parameter(s) {unknown}; "
            f"it has {list(SEARCH_PARAMS[kind]) or 'none'}"
        )
    # Validate everything before touching the index so a bad value leaves it as it was.
    checked: dict[str, int] = {}
    if "nprobe" in params:
        nlist = int(faiss.extract_index_ivf(index).nlist)
        checked["nprobe"] = _check_int("nprobe", params["nprobe"], 1, nlist)
    if "refine" in params:
        checked["refine"] = _check_int("refine", params["refine"], 1)
    if "ef_search" in params:
        checked["ef_search"] = _check_int("ef_search", params["ef_search"], 1)

    if "nprobe" in checked:
        faiss.extract_index_ivf(index).nprobe = checked["nprobe"]
    if "refine" in checked:
        _concrete(index).k_factor = float(checked["refine"])
    if "ef_search" in checked:
        _concrete(index).hnsw.efSearch = checked["ef_search"]


CONE_BOUNDS = ("on", "cheap", "off")


@dataclass(frozen=True)
class PlannerParams:
    """Knobs of ``filtered_search``; the defaults come from the 1M-job benchmark."""

    exact_max_eligible: int = 20_000  # at or below: exact subset scan (cheaper than ANN there)
    exact_max_fraction: float = 0.02  # ... or at or below this share of n
    # ... but only for a sparse mask: above this share of n (a live slot's not-deleted rows, a
    # broad filter) the ANN index with the filter costs what it costs unfiltered, an exact
    # scan what n rows cost (a 20k slot with one delete: 0.94 ms exact vs 0.08 ms ANN)
    exact_max_selectivity: float = 0.5
    nprobe: int | None = None  # base IVF probes; None -> the index's own nprobe
    ef_search: int | None = None  # base HNSW efSearch; None -> the index's own
    k_factor: float | None = None  # refine re-ranks k_factor * k; None -> the index's own
    selectivity_exponent: float = 0.5  # probe depth grows as selectivity ** -a (a=1: linear)
    max_rounds: int = 3  # ANN rounds (probes double each) before the exact fallback
    max_ef_search: int = 4096  # HNSW efSearch ceiling (graph walks get slow beyond)
    margin_quantile: float | None = 0.25  # IVF margin: this quantile of probing.spill; None: off
    check_rows: int = 1024  # eligible rows scored exactly to check filtered ANN pages (0: off)
    exact_share: float = 0.5  # ANN scoring more than this share of the eligible rows: exact
    # IVF, correlated queries (ebr.index.query.bound): "on": scan every unprobed cell that could
    # hold a row beating the page, exact where that is over exact_share of the eligible rows;
    # "cheap": only where it is not (the margin's page stands elsewhere); "off": margin alone
    cone_bound: str = "on"

    def __post_init__(self) -> None:
        knobs = [v for v in (self.nprobe, self.ef_search, self.k_factor) if v is not None]
        shares = (self.exact_max_fraction, self.exact_share, self.margin_quantile or 0.0,
                  self.exact_max_selectivity)  # fmt: skip
        rules = {
            "exact_max_eligible, check_rows >= 0": min(self.exact_max_eligible, self.check_rows)
            >= 0,
            "the shares (exact_max_fraction, exact_share, margin_quantile, "
            "exact_max_selectivity) in [0, 1]": all(0 <= v <= 1 for v in shares),
            "nprobe, ef_search, k_factor >= 1 or None": all(v >= 1 for v in knobs),
            "selectivity_exponent in [0, 2]": 0 <= self.selectivity_exponent <= 2,
            "max_rounds, max_ef_search >= 1": min(self.max_rounds, self.max_ef_search) >= 1,
            f"cone_bound in {CONE_BOUNDS}": self.cone_bound in CONE_BOUNDS,
        }
        broken = [rule for rule, ok in rules.items() if not ok]
        if broken:
            raise ValueError(f"PlannerParams needs {'; '.join(broken)}; got {self}")
